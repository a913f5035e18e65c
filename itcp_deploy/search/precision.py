"""Width and precision in one exact solve: a group's state is ``(width, precision)``, precision fp32 or int8.

Precision belongs to a group, for every layer the group owns: a layer runs at its *output* group's precision and
reads a tensor at its *input* group's precision. A residual add joins tensors of one group, so it never mixes
precisions; a Q/DQ boundary appears exactly on a layer whose input and output groups differ in precision. So
the perf model gives each layer one width table per precision pair ``(input group's, output group's)``
(:data:`Combo`), the boundary's cost included, and the problem keeps the DP's shape: one term per layer over
its two groups' states. The DP (:mod:`itcp_deploy.search.dp`) runs unchanged on states and stays exact.

The network's input and output, and every fixed group, stay fp32 (one state): the engine's interface is fp32,
and the classifier, whose output group is the fixed output, is never quantized (it loses most in INT8).

Scores: the DP maximises one number per state. The width scores are loss units (``taylor`` and
``sensitivity``: minus the estimated loss increase when the group alone is cut to that width,
:mod:`itcp_deploy.pruning.scores`); ``int8_cost[g]`` is the loss increase measured when group ``g`` alone is
INT8 (calibrated, on held-out batches). So ``score(w, int8) = score(w) - int8_cost[g]`` and
``score(w, fp32) = score(w)``: the DP maximises minus the summed estimated loss increase of pruning and
quantization, which assumes both add up over groups (the same assumption the width scores already make).

Example::

    problem = mixed_problem(space, tables, 0.05, width_scores, {"layer1.0.conv1": 0.02, ...})
    widths, precisions = split_plan(solve(problem, budget_ms).widths)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from itcp_deploy.errors import UsageError
from itcp_deploy.perfmodel.mixed import FP32, INT8, MIXED, SAME, Combo, group_precisions
from itcp_deploy.search.problem import SearchProblem, Term, space_scores
from itcp_deploy.space import PruningSpace

__all__ = ["AGREEMENT_Z", "FP32", "INT8", "MIXED", "agreement_aim", "fp32_costs", "group_states", "int8_groups",
           "keep_fp32", "mixed_problem", "plan_states", "problem_from_mixed", "split_plan", "split_states",
           "state_scores"]
State = tuple[int, str]
_RANK = {INT8: 0, FP32: 1}  # within one width, the cheaper, lower-scoring state first (as widths ascend)


def group_states(space: PruningSpace, precisions: Sequence[str] = MIXED,
                 fp32_groups: Collection[str] = ()) -> dict[str, tuple[State, ...]]:
    """Every group's states, ordered by width, then int8 before fp32; a fixed group: its width at fp32. Width 0
    (a removed residual branch) has one state, at fp32 when fp32 is searched: no layer is left to quantize (a
    plan naming a removed group INT8 names layers its engine does not have). ``fp32_groups``: groups held at
    fp32 (the final stage's precision control, :func:`keep_fp32`)."""
    bad = [p for p in precisions if p not in _RANK]
    if bad or not precisions or (fp32_groups and FP32 not in precisions):
        raise UsageError(f"precisions {list(precisions)} are not a subset of {list(MIXED)} that can hold "
                         f"{len(fp32_groups)} group(s) at fp32",
                         f"choose per-group precisions among {', '.join(MIXED)}")
    order = sorted(set(precisions), key=_RANK.get)
    removed = (FP32,) if FP32 in order else tuple(order)
    return {g.name: ((g.candidates[-1], FP32),) if g.fixed else
            tuple((w, p) for w in g.candidates
                  for p in (order if w > 0 and g.name not in fp32_groups else removed)) for g in space.groups}


AGREEMENT_Z = 1.645  # one-sided 95%: an agreement measured on n images is that sure to hold on others


def agreement_aim(min_agreement: float, images: int) -> float:
    """The agreement a mixed engine must measure on ``images`` evaluation images so that its agreement on images
    it was not measured on is at least ``min_agreement`` with 95% confidence (the precision control's margin, as
    the SLA's margin covers a latency's re-measurement): ``min_agreement`` plus 1.645 standard errors of a share
    at ``min_agreement`` over ``images``, at most 1. Measured: ResNet-20's 4x mixed engines agreed 0.951 and
    0.952 on a run's 1,000 images, 0.949 and 0.948 on 2,000 others."""
    if images <= 0:
        return 1.0
    return min(1.0, min_agreement + AGREEMENT_Z * math.sqrt(min_agreement * (1.0 - min_agreement) / images))


def plan_states(space: PruningSpace, widths: Mapping[str, int], int8: Collection[str]) -> dict[str, State]:
    """A plan as the search's states: each prunable group at its width in ``widths``, a fixed one at its full
    width; the groups in ``int8`` at int8, every other at fp32 (the inverse of :func:`split_states`)."""
    precisions = group_precisions(space, int8)
    return {g.name: (g.candidates[-1] if g.fixed else int(widths[g.name]), precisions[g.name]) for g in space.groups}


def fp32_costs(problem: SearchProblem, states: Mapping[str, State], groups: Sequence[str]) -> dict[str, float]:
    """What holding each of ``groups`` at fp32 adds to the plan ``states``'s predicted latency (ms): the time its
    INT8 saves. A stage's residual group is costly (ResNet-56 at 4x: 0.286 of 0.548 ms), a block's inner one cheap
    (0.013 ms there; ``bench/fp32_hold_cost.py``, docs/benchmarks.md section 26)."""
    base = problem.cost(states)
    return {g: problem.cost({**states, g: (states[g][0], FP32)}) - base for g in groups}


def keep_fp32(disagreement: Mapping[str, float], measured: float, allowed: float,
              cost: Mapping[str, float] | None = None) -> tuple[str, ...]:
    """The INT8 groups to hold at fp32 when a mixed engine's top-1 disagrees with its FP32 model on a share
    ``measured`` of the images, over ``allowed``: ranked by the top-1s each moves when it alone is INT8
    (``disagreement``) per millisecond its INT8 saves (``cost``, :func:`fp32_costs`; without it, by the
    top-1s alone), taken until they account for the excess share of the groups' summed disagreement, at least
    one. Flips need not add up over groups, so this is a ranking and a proportion, checked by measuring the
    re-solved engine; () when ``measured`` is within ``allowed``."""
    if measured <= allowed or not disagreement:
        return ()
    per_ms = {g: d / max((cost or {}).get(g, 1.0), 1e-9) for g, d in disagreement.items()}
    ranked = sorted(disagreement, key=lambda g: (-per_ms[g], -disagreement[g], g))
    total = sum(disagreement.values())
    if total <= 0:
        return tuple(sorted(ranked))  # no group flips alone, only together: every one goes back
    need, kept, taken = (measured - allowed) / measured * total, [], 0.0
    for g in ranked:
        if kept and taken >= need:
            break
        kept.append(g)
        taken += disagreement[g]
    return tuple(sorted(kept))


def state_scores(space: PruningSpace, states: Mapping[str, tuple[State, ...]],
                 width_scores: Mapping[str, np.ndarray],
                 int8_cost: Mapping[str, float | np.ndarray]) -> dict[str, np.ndarray]:
    """Score of each state: the width's score, less the group's INT8 cost at int8 (see the module docstring).
    ``int8_cost[g]``: one number, or one per candidate width of ``g``."""
    by_width = space_scores(space, width_scores)
    out = {}
    for g in space.groups:
        cost = np.broadcast_to(np.asarray(int8_cost.get(g.name, 0.0), dtype=float), (len(g.candidates),))
        if any(p == INT8 for _, p in states[g.name]) and g.name not in int8_cost:
            raise UsageError(f"no INT8 cost for group {g.name!r}", "score every prunable group's INT8 cost")
        out[g.name] = np.array([by_width[g.name][g.index(w)] - (cost[g.index(w)] if p == INT8 else 0.0)
                                for w, p in states[g.name]])
    return out


def mixed_problem(
    space: PruningSpace,
    tables: Mapping[str, Mapping[Combo, np.ndarray]],
    constant: float,
    width_scores: Mapping[str, np.ndarray],
    int8_cost: Mapping[str, float | np.ndarray] | None = None,
    precisions: Sequence[str] = MIXED,
    fp32_groups: Collection[str] = (),
) -> SearchProblem:
    """The search over states: ``tables[layer][(p_in, p_out)]`` is the layer's latency (ms) over its groups'
    candidate widths (len C_in x len C_out) when its input group is at ``p_in`` and its output group at
    ``p_out``. With ``precisions=("fp32",)`` this is :func:`~itcp_deploy.search.problem.problem_from_tables`
    on the fp32 tables, state ``(w, "fp32")`` for width ``w``; ``fp32_groups``: held at fp32."""
    states = group_states(space, precisions, fp32_groups)
    terms = []
    for layer in space.layers:
        a, b = space.group(layer.in_group), space.group(layer.out_group)
        by_combo = tables[layer.name]
        same = a.name == b.name  # a depthwise layer: only the diagonal counts (Term), one precision
        needed = {(pa, pb) for _, pa in states[a.name] for _, pb in states[b.name] if pa == pb or not same}
        if needed - set(by_combo):
            raise UsageError(f"layer {layer.name} has no latency table for precisions {sorted(needed - set(by_combo))}",
                             "profile engines that mix precisions (--precision mixed)")
        table = np.array([[np.asarray(by_combo[(pa, pb)], dtype=float)[a.index(wa), b.index(wb)]
                           if (pa, pb) in needed else 0.0 for wb, pb in states[b.name]] for wa, pa in states[a.name]])
        terms.append(Term(a.name, b.name, table.reshape(len(states[a.name]), len(states[b.name]))))
    scores = state_scores(space, states, width_scores, int8_cost or {})
    return SearchProblem(candidates=states, scores=scores, terms=terms, constant=float(constant))


def problem_from_mixed(
    space: PruningSpace,
    perf_model,
    width_scores: Mapping[str, np.ndarray],
    int8_cost: Mapping[str, float | np.ndarray],
    fp32_groups: Collection[str] = (),
) -> SearchProblem:
    """The search over states on a mixed-precision :class:`~itcp_deploy.perfmodel.PerfModel` (fitted on a
    profile of mixed engines: its ``precision_tables``); ``fp32_groups``: held at fp32."""
    if not perf_model.precision_tables:
        raise UsageError("the perf model has no mixed-precision tables",
                         "fit it on a profile taken with --precision mixed")
    tables = {layer.name: {SAME: perf_model.layer_table(layer.name), **perf_model.precision_tables[layer.name]}
              for layer in space.layers}
    return mixed_problem(space, tables, perf_model.constant_ms, width_scores, int8_cost, fp32_groups=fp32_groups)


def split_plan(states: Mapping[str, State | Sequence]) -> tuple[dict[str, int], dict[str, str]]:
    """A plan of states as its widths and its precisions."""
    widths = {g: int(s[0]) for g, s in states.items()}
    return widths, {g: str(s[1]) for g, s in states.items()}


def split_states(states: Mapping[str, State | Sequence | int]) -> tuple[dict[str, int], tuple[str, ...]]:
    """A solution's plan as its widths and INT8 groups: the states of a search over precisions, or plain
    widths (a search at one precision: no INT8 group)."""
    if not any(isinstance(s, (tuple, list)) for s in states.values()):
        return {g: int(w) for g, w in states.items()}, ()  # type: ignore[arg-type]
    return split_plan(states)[0], int8_groups(states)  # type: ignore[arg-type]


def int8_groups(states: Mapping[str, State | Sequence]) -> tuple[str, ...]:
    """The groups a plan puts at int8, sorted (what names a mixed engine); a removed group (width 0) is none."""
    return tuple(sorted(g for g, s in states.items() if s[1] == INT8 and int(s[0]) > 0))
