"""The closed SLA loop over a run's targets (one or several): solve -> prune -> build every target's engine ->
measure each against its dense engine -> correct each target's budget from its own rounds.

The perf model predicts; only a measured engine decides. Each round solves for predicted budgets (one per
target) and measures the plan's engine on every target with its :class:`~itcp_deploy.pipeline.meter.TargetMeter`.
A plan is accepted when every target is met and at least one lands in its acceptance band ``[accept_low * aim,
aim]`` (aim = SLA less the safety margin; a plan far under every aim wastes accuracy). Otherwise each target that
missed gets a new budget from its own rounds (:mod:`~itcp_deploy.pipeline.budget_search`: a bracket of met/missed
budgets, secant or bisection inside it); when every target was met, every budget is relaxed that way. After
``max_rounds`` (or once a bracket has collapsed) the best plan that met every target is kept, else the last one,
with a note.

One target solves with the run's method (``itcp`` or a baseline, :data:`~itcp_deploy.search.baselines.
SEARCH_METHODS`); several use :func:`~itcp_deploy.search.vector.solve_targets` (the exact 2-D DP for two,
Lagrangian relaxation for more). With several, the perf models choose the vector plan but measurement decides
between it and each target's own plan: every single-target plan that scores higher is built and measured on
every target like a round, best first, and the first that meets every target's aim is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from itcp_deploy.atomic_io import read_json
from itcp_deploy.errors import InfeasibleError
from itcp_deploy.pipeline import probe
from itcp_deploy.pipeline.budget_search import Round, accepted, next_budget
from itcp_deploy.pipeline.meter import TargetMeter
from itcp_deploy.pipeline.stages import RunContext, channel_importance_of, one_shot
from itcp_deploy.search.precision import split_states

if TYPE_CHECKING:
    from torch import nn

    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.search.baselines import SearchInputs
    from itcp_deploy.search.vector import VectorSolution

Log = Callable[[str], None]
_detail = logging.getLogger("itcp_deploy")  # each round's measurement detail, shown by `itcp-deploy -v`
Solve = Callable[[list[float]], "VectorSolution"]
Measure = Callable[[dict[str, int], int], list[dict]]  # widths, round -> per target {"measured_ms": ..., ...}


@dataclass
class Rounds:
    """Per target (in order): its name, its aim (what a measured plan must be at or under, same unit as
    ``measure``), and the perf model's fastest plan (predicted ms: no budget below 1.01x of it is solved);
    then every plan tried, its record, and the notes."""

    names: list[str]
    aims: list[float]
    floors: list[float]
    records: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    history: list[list[Round]] = field(default_factory=list)
    solutions: list[VectorSolution] = field(default_factory=list)

    def record(self, sol: VectorSolution, measured: list[dict], kind: str) -> dict:
        """Append one measured plan (the report's record of everything tried)."""
        rec = {"round": len(self.records), "kind": kind, "score": sol.score, "method": sol.method,
               "bound": sol.bound if np.isfinite(sol.bound) else None,
               **_plan_record(sol.widths), "targets": [
                   {"name": n, "budget_ms": b, "predicted_ms": p, "aim_ms": a, **m}
                   for n, b, p, a, m in zip(self.names, sol.budgets, sol.costs, self.aims, measured, strict=True)]}
        self.solutions.append(sol)
        self.records.append(rec)
        return rec


def _plan_record(states: dict) -> dict:
    widths, int8 = split_states(states)
    return {"widths": widths, **({"int8_groups": list(int8)} if int8 else {})}


def run_rounds(rounds: Rounds, budgets: list[float], solve: Solve, measure: Measure, *, accept_low: float,
               max_rounds: int, log: Log) -> VectorSolution:
    """The loop itself, for one target or many: solve, measure, correct; returns the accepted plan (else the
    fallback). ``budgets``: the first round's predicted budgets."""
    rounds.history = [[] for _ in rounds.names]
    for r in range(max_rounds):
        sol = solve(budgets)
        measured = measure(sol.widths, r)
        rounds.record(sol, measured, "plan")
        for k, m in enumerate(measured):  # a miss is placed at its predicted cost, a hit at its budget
            place = budgets[k] if m["measured_ms"] <= rounds.aims[k] else sol.costs[k]
            rounds.history[k].append(Round(place, m["measured_ms"], sol.score))
        log(f"round {r}: " + "; ".join(
            f"{n} budget {b:.4f} predicted {p:.4f} measured {m['measured_ms']:.4f} (aim {a:.4f})"
            for n, b, p, m, a in zip(rounds.names, budgets, sol.costs, measured, rounds.aims, strict=True)))
        last = [h[-1] for h in rounds.history]
        if all(x.measured <= a for x, a in zip(last, rounds.aims, strict=True)) and any(
                accepted(x, a, accept_low) for x, a in zip(last, rounds.aims, strict=True)):
            return sol
        new = _next_budgets(rounds, budgets, sol, accept_low, r)
        if new is None:
            break
        budgets = new
    return _fallback(rounds, accept_low)


def _next_budgets(rounds: Rounds, budgets: list[float], sol: VectorSolution, accept_low: float,
                  r: int) -> list[float] | None:
    """Each missed target's budget from its own rounds; all of them when every target was met. None (with a
    note) when a needed correction has no budget left: its bracket collapsed, or it is below the fastest plan."""
    all_met = all(h[-1].measured <= a for h, a in zip(rounds.history, rounds.aims, strict=True))
    new = list(budgets)
    for k, (hist, aim, low) in enumerate(zip(rounds.history, rounds.aims, rounds.floors, strict=True)):
        if not (all_met or hist[-1].measured > aim):
            continue
        who = f" ({rounds.names[k]})" if len(rounds.names) > 1 else ""
        step = next_budget(hist, aim, accept_low)
        if step is None:
            rounds.notes.append(f"round {r}{who}: no budget left between the fastest plan that missed the target "
                                "and the slowest that met it; stopped")
            return None
        floor = low * 1.01  # the DP's bins need a little room above the fastest plan
        if step < floor < sol.costs[k]:
            step = floor  # the fastest plans are not tried yet: try them
        elif step < floor:
            rounds.notes.append(f"round {r}{who}: the corrected budget {step:.4g} ms is below the perf model's "
                                f"minimum {low:.4g} ms; stopped")
            return None
        new[k] = step
    return new


def _fallback(rounds: Rounds, accept_low: float) -> VectorSolution:
    """No round landed in a band while meeting every target: the best-scoring plan that met every target,
    else the last one."""
    n = len(rounds.records)
    met = [i for i, rec in enumerate(rounds.records) if not _misses(rec)]
    if met:
        best = max(met, key=lambda i: rounds.records[i]["score"] or 0.0)
        rounds.notes.append(f"no round landed in [{accept_low:.0%}, 100%] of a target's aim while meeting every "
                            f"target after {n} round(s); kept the best-scoring plan that met every target")
        return rounds.solutions[best]
    rounds.notes.append(f"gave up after {n} round(s): every plan measured above a target's aim ("
                        + "; ".join(_misses(rounds.records[-1])) + "); the perf model underestimates this backend "
                        "here, re-profile with more runs or relax the SLA")
    return rounds.solutions[-1]


def _misses(rec: dict) -> list[str]:
    """The targets a measured plan missed (measured over its aim: the SLA less the margin), as text."""
    return [f"{t['name']} measured {t['measured_ms']:.4f} ms > aim {t['aim_ms']:.4f}"
            for t in rec["targets"] if t["measured_ms"] > t["aim_ms"]]


def latency_split(perf, dense_ms: float) -> dict:
    """The dense engine's latency split by the perf model into the part no plan changes (``fixed_ms``: work
    outside any layer, such as a detector's resize, box decoding and NMS, plus layers whose widths are all kept)
    and the prunable network's share, and the latency of the fastest plan (``minimum_ms``): an SLA below it is
    out of reach. Predictions are scaled by the measured over the profiled dense latency
    (``PerfModel.dense_reference_ms``)."""
    from itcp_deploy.search.dp import min_latency_ms

    scale = dense_ms / perf.dense_reference_ms()
    fixed = max(perf.fixed_ms(), 0.0)  # a negative calibration offset is the fit's line, not a time: none
    return {"fixed_ms": fixed * scale, "prunable_ms": dense_ms - fixed * scale,
            "minimum_ms": min_latency_ms(perf) * scale}


def check_reachable(meters: Sequence[TargetMeter], perf: Sequence[PerfModel], names: Sequence[str]) -> None:
    """Refuse SLAs below what the fastest plan reaches, naming every target's minimum (measured ms, scaled by
    each target's measured/profiled dense latency, :func:`latency_split`) and which targets are out of reach."""
    parts, bad = [], []
    for name, meter, p in zip(names, meters, perf, strict=True):
        split = latency_split(p, meter.dense_ms())
        low = split["minimum_ms"]
        parts.append(f"{name}: SLA {meter.sla_ms:.4g} ms, minimum about {low:.4g} ms, of which about "
                     f"{split['fixed_ms']:.4g} ms no width changes")
        if meter.aim_ms < low:
            bad.append(f"{name} to at least {low / (1 - meter.latency.margin):.4g} ms")
    if bad:
        raise InfeasibleError("an SLA is below the fastest reachable plan (" + "; ".join(parts) + ")",
                              "relax " + ", ".join(bad) + ", or use a model with a smaller minimum width")


__all__ = ["Rounds", "check_reachable", "latency_split", "run_rounds"]


# ---------------------------------------------------------------- `run`'s loop: the budget strategy


def search_inputs(ctx: RunContext, perf: list[PerfModel], scores: dict[str, np.ndarray],
                  importance: dict[str, np.ndarray] | None = None) -> list[SearchInputs]:
    """Each target's search inputs: its perf model and the run's scores; a mixed-precision run's INT8 costs (the
    search is over (width, precision) states) and the groups its re-solves held at FP32 (the precision control)."""
    from itcp_deploy.search.baselines import SearchInputs

    costs = read_json(ctx.folder.int8_cost, "int8 costs") if ctx.folder.int8_cost.is_file() else None
    held = tuple(sorted({g for r in ctx.state.retries for g in r.get("fp32_groups", [])}))
    return [SearchInputs(p.space, p, scores, importance, costs, fp32_groups=held) for p in perf]


def _solver(ctx: RunContext, perf: list[PerfModel], scores: dict[str, np.ndarray],
            fronts: list[list[tuple[float, float]]]) -> tuple[list, Solve]:
    """The problems and the solve of one round: one target with the run's method (its Pareto front kept in
    ``fronts``), several with the vector DP."""
    from itcp_deploy.search.baselines import run_method
    from itcp_deploy.search.vector import solve_targets, vector_solution

    c = ctx.config
    importance = None
    if c.method == "global-magnitude":
        from itcp_deploy.pruning import channel_importance

        importance = channel_importance(ctx.inputs.model, perf[0].space, "l1")
    inputs = search_inputs(ctx, perf, scores, importance)
    problems = [i.problem() for i in inputs]
    names = [t.name for t in c.targets]
    if len(problems) > 1:
        return problems, lambda budgets: solve_targets(problems, budgets, names, bins=c.loop.bins)

    def solve_one(budgets: list[float]) -> VectorSolution:
        sol = run_method(c.method, inputs[0], budgets[0], bins=c.loop.bins)
        fronts.append([(float(a), float(b)) for a, b in sol.front])
        return vector_solution(problems, budgets, sol.widths, exact=sol.exact, method=sol.method)

    return problems, solve_one


def closed_loop(ctx: RunContext, meters: list[TargetMeter]) -> dict:
    """Run the loop on every target; writes the chosen plan (one target: with its Pareto front) to
    ``folder.plan`` and returns the rounds.

    Raises:
        InfeasibleError: an SLA is below its target's fastest plan (names every target's minimum).
    """
    from itcp_deploy.engines.build import build_engine
    from itcp_deploy.engines.mixed import group_layers
    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.search.dp import min_latency_ms

    c, targets = ctx.config, ctx.config.targets
    perf = [PerfModel.load(ctx.folder.target(t.name).perf_model) for t in targets]
    check_reachable(meters, perf, [t.name for t in targets])
    for t, m, p in zip(targets, meters, perf, strict=True):
        ctx.log(f"{t.name}: dense {m.dense_ms():.4f} ms measured, {p.dense_reference_ms():.4f} ms profiled, "
                f"{p.dense_ms():.4f} ms predicted; "
                f"{t.latency.describe(m.dense_ms())}, aim {m.aim_ms:.4f} ms")

    importance = _as_shipped(ctx)
    shipped: dict[str, tuple] = {}  # each round's one-shot model and refit layers, by its widths

    def measure(states: dict, r: int) -> list[dict]:
        widths, int8 = split_states(states)
        pruned = _round_model(ctx, widths, importance, shipped)
        out = []
        for t, meter in zip(targets, meters, strict=True):
            built = build_engine(pruned, t.input_shape, *ctx.folder.target(t.name).round_engine("round", r),
                                 t.engine_at(group_layers(ctx.space, int8, widths)))
            m = meter.measure(built.artifact, precise=True)
            out.append({"measured_ms": m.measured_ms, "ratio_to_dense": m.ratio, "timing_rounds": m.timing_rounds})
            _detail.debug("round %d %s: %.4f of dense (rounds p10-p90 %s), %d timing rounds, engine %s", r, t.name,
                          m.ratio, m.latency.ratio_spread, m.timing_rounds, built.artifact)
        _detail.debug("round %d widths: %s", r, widths)
        return out

    scores = ctx.folder.read_arrays(ctx.folder.scores)
    probes: list[dict] = []
    biases = [1.0] * len(perf)
    if probe.wanted(ctx):
        perf, probes = probe.probe_plans(ctx, meters, perf, lambda models: _solver(ctx, models, scores, [])[1])
        perf, biases = probe.debiased(ctx, perf, probes)
    fronts: list[list[tuple[float, float]]] = []
    problems, solve = _solver(ctx, perf, scores, fronts)
    rounds = Rounds([t.name for t in targets], [m.aim_ms for m in meters], [min_latency_ms(p) for p in perf])
    chosen = run_rounds(rounds, probe.budgets(ctx, meters, perf), solve, measure, accept_low=c.loop.accept_low,
                        max_rounds=c.loop.max_rounds, log=ctx.log)
    if len(targets) > 1:
        chosen = _measure_candidates(rounds, problems, measure, chosen, ctx.log)
    i = rounds.solutions.index(chosen)
    kept = shipped.get(_widths_key(chosen.widths))  # the accepted plan's one-shot model, where rounds made them
    _save_plan(ctx, chosen, rounds.records[i]["targets"][0]["budget_ms"], fronts[i] if i < len(fronts) else [],
               kept[0] if kept else None)
    return {**loop_record(targets, meters, rounds.records, rounds.notes, i, chosen), "probes": probes,
            "search_bias": {t.name: b for t, b in zip(targets, biases, strict=True)},
            "shipped_refit": list(kept[1]) if kept else None}  # None: the finetuning stage makes the model


def _round_model(ctx: RunContext, widths: dict[str, int], importance: dict | None, shipped: dict) -> nn.Module:
    """A round's model: the plain pruned weights, or (``importance`` given) the one-shot model, kept in
    ``shipped`` by its widths."""
    from itcp_deploy.pruning import apply_widths

    if importance is None:
        return apply_widths(ctx.inputs.model, ctx.space, widths, importance="l1")
    key = _widths_key(widths)
    shipped[key] = shipped.get(key) or one_shot(ctx, widths, importance)
    return shipped[key][0]


def _widths_key(states: dict) -> str:
    return repr(sorted(split_states(states)[0].items()))


def _as_shipped(ctx: RunContext) -> dict | None:
    """The channel importance to build each round's engine as it will ship (the one-shot recipe), when the
    dense engine's work depends on its values: SSDLite's final engine (compensated, BatchNorm re-estimated)
    scored random images differently from the loop's plain-pruned engines, NMS kept other boxes, and it
    measured 0.846 of dense where the loop had accepted 0.722. None (plain pruned weights: the latency of a
    static graph does not depend on them) otherwise."""
    from itcp_deploy.engines.export import value_dependent
    from itcp_deploy.pipeline.run_dir import TargetFiles

    dense = ctx.folder.target(ctx.config.targets[0].name).root / f"{TargetFiles.DENSE}.onnx"
    if not dense.is_file() or not value_dependent(dense):
        return None
    ctx.log("the dense engine's work depends on its values (e.g. NMS): each round's engine is built as it will "
            "ship (compensated, BatchNorm re-estimated)")
    return channel_importance_of(ctx)


def loop_record(targets, meters: list[TargetMeter], records: list[dict], notes: list[str], accepted_round: int,
                chosen: VectorSolution | None = None) -> dict:
    """What the loop stage records (``state.json``): per target its dense latency, SLA, aim, the plan's
    predicted cost and whether it binds; the rounds and notes."""
    names = [t.name for t in targets]
    return {"dense_measured_ms": {n: m.dense_ms() for n, m in zip(names, meters, strict=True)},
            "sla_ms": {n: m.sla_ms for n, m in zip(names, meters, strict=True)},
            "aim_ms": {n: m.aim_ms for n, m in zip(names, meters, strict=True)}, "accepted_round": accepted_round,
            "binding": dict(zip(names, chosen.binding, strict=True)) if chosen else {n: True for n in names},
            "predicted_ms": dict(zip(names, chosen.costs, strict=True)) if chosen else {n: None for n in names},
            "rounds": records, "notes": notes}


def _save_plan(ctx: RunContext, chosen: VectorSolution, budget_ms: float, front: list, model: nn.Module | None) -> None:
    """Write the chosen plan, and with it the loop's one-shot ``model`` of it when the rounds made one (for the
    finetuning stage: :attr:`RunFolder.shipped_model`)."""
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.pruning import save_pruned

    c = ctx.config
    widths, int8 = split_states(chosen.widths)
    plan = PruningPlan(model=c.model, input_shape=tuple(c.input_shape),
                widths={g.name: widths[g.name] for g in ctx.space.prunable}, method=c.method,
                criterion=c.criterion, importance=c.importance, budget_ms=budget_ms, predicted_ms=chosen.costs[0],
                score=chosen.score, weights=c.weights, pareto=front, int8_groups=int8)
    if model is None:
        plan.save(ctx.folder.plan)
    else:
        save_pruned(ctx.folder.shipped_model, model, plan, plan_path=ctx.folder.plan)


def _single_target_plans(names: list[str], problems, budgets: list[float], above: float) -> list[VectorSolution]:
    """Each target's own 1-D DP plan at its budget that scores above ``above``, best first (one per target;
    a plan two targets share is tried once)."""
    from itcp_deploy.search.dp import solve
    from itcp_deploy.search.vector import vector_solution

    out: list[VectorSolution] = []
    for name, problem, budget in zip(names, problems, budgets, strict=True):
        try:
            widths = solve(problem, budget).widths
        except InfeasibleError:
            continue
        sol = vector_solution(problems, budgets, widths, exact=True, method=f"1-D DP for {name}")
        if sol.score > above + 1e-9 and all(o.widths != sol.widths for o in out):
            out.append(sol)
    return sorted(out, key=lambda s: -s.score)


def _measure_candidates(rounds: Rounds, problems, measure: Measure, chosen: VectorSolution,
                        log: Log) -> VectorSolution:
    """Step 5 of the method across plans: the perf models chose the vector plan, measurement decides. Each
    single-target plan (the 1-D DP at that target's corrected budget, the chosen round's) that scores higher
    than the chosen plan is built and measured on every target like a round, best first; the first that meets
    every target's aim as measured replaces the chosen plan (a perf model that over-predicts one target makes
    the vector DP give up score that the engines do not ask for). Every candidate is recorded with its verdict."""
    i = rounds.solutions.index(chosen)
    rec = rounds.records[i]
    chosen_met = not _misses(rec)
    budgets = [t["budget_ms"] for t in rec["targets"]]
    for sol in _single_target_plans(rounds.names, problems, budgets, chosen.score if chosen_met else -np.inf):
        cand = rounds.record(sol, measure(sol.widths, len(rounds.records)), f"candidate: {sol.method}")
        missed = _misses(cand)
        cand["verdict"] = ("rejected: " + "; ".join(missed)) if missed else (
            f"accepted: meets every target as measured, score {sol.score:.4g} > {chosen.score:.4g} "
            f"(round {i}'s plan)")
        log(f"round {cand['round']} ({cand['kind']}, score {sol.score:.4g}): {cand['verdict']}")
        if not missed:
            rec["verdict"] = f"replaced by round {cand['round']} ({cand['kind']}), which scores higher"
            return sol
    rec.setdefault("verdict", "accepted" if chosen_met else "kept: no plan met every target")
    return chosen
