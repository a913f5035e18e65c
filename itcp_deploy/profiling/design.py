"""Which whole-network width plans to build and measure, so a per-layer model can predict any plan.

Plans, in this order (deterministic for a seed):

* ``dense``: every group at full width;
* ``design``: the all-minimum plan (an extreme), then Latin-hypercube plans: for each group, the ``n`` design
  builds visit its candidates in ``n`` equal strata (each candidate equally often when ``n`` is a multiple of
  the candidate count), independently shuffled per group; of ``tries`` such draws the one that covers the most
  distinct (layer, input width, output width) cells is kept, since a layer's latency depends on both widths;
  a design that repeats an earlier plan is replaced by a random unseen one;
* ``holdout``: uniformly random plans, never fitted, only used to validate the performance model.

With a ``focus`` (the latency, as a fraction of the dense engine's, that the search will aim at: ``run`` knows
it from the SLA), half the design plans are Latin-hypercube plans over each group's candidates near
``sqrt(focus)`` of its width (a conv's cost goes with the product of its two widths), and half the targeted
designs and half the holdouts are drawn there: the model is validated where it is fitted and where it is
searched, and an adaptive profile stops on its error in both places. Uniform plans sit at 0.1-0.5 of a
network's latency, so a 1.5x SLA (0.67) was searched where no engine but the dense one had measured the wide
cells it uses (a RegNet-Y-400MF at 224: seven designs at 0.08-0.47 of its latency).

Example (ResNet-20, ``max_builds=32, holdout=10``): 1 dense + 1 all-minimum + 20 Latin-hypercube designs +
10 holdouts = 32 builds.

Adaptive (``DesignConfig.adaptive``, when the profiler is given a judge): ``max_builds`` is a budget. The first
round is the design above with ``FIRST_BUILDS`` builds of which ``min(holdout, ROUND_HOLDOUT)`` are holdouts;
after each round the judge (the perf model's held-out error against its bar) decides whether to stop. If not,
:func:`next_round` adds ``STEP_BUILDS`` plans: the two oldest holdouts become design engines (the model has
seen its errors there, and they are plans the design did not cover), two fresh random holdouts replace them,
and the rest are *targeted* designs: of many random plans, those that measure the most (layer, input width,
output width) cells not measured yet, each cell weighted by its layer's share of the held-out error. Every
plan depends only on the seed and the measurements, so a rerun replays the rounds from the cache.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, replace

from itcp_deploy.errors import UsageError
from itcp_deploy.space import PruningSpace


@dataclass(frozen=True)
class DesignConfig:
    """How many engines to build. Defaults to 32 builds of which 10 are holdouts."""

    max_builds: int = 32
    holdout: int = 10
    seed: int = 0
    tries: int = 64
    adaptive: bool = True
    focus: float | None = None  # latency / dense latency the search aims at (1 / speed-up); see the docstring


FIRST_BUILDS = 12  # an adaptive profile's first round: dense, all-minimum, 6 Latin-hypercube designs, 4 holdouts
ROUND_HOLDOUT = 4
STEP_BUILDS = 4  # each further round: 2 holdouts become designs, 2 new holdouts, 2 targeted designs


@dataclass(frozen=True)
class PlannedEngine:
    """One plan to build: ``engine_id`` is a short hash of the widths (and INT8 groups), stable across runs.
    ``int8_groups``: the groups a mixed-precision engine quantizes (``--precision mixed``), sorted."""

    engine_id: str
    role: str
    widths: dict[str, int]
    int8_groups: tuple[str, ...] = ()


def engine_id(widths: dict[str, int], int8_groups: tuple[str, ...] | None = None) -> str:
    """A plan's id; a mixed-precision plan's (``int8_groups`` given, even empty) also hashes its INT8 groups."""
    payload = sorted(widths.items()) if int8_groups is None else [sorted(widths.items()), sorted(int8_groups)]
    return hashlib.sha1(json.dumps(payload).encode()).hexdigest()[:12]


def with_precisions(plans: list[PlannedEngine], space: PruningSpace, config) -> list[PlannedEngine]:
    """``plans`` as a profile with ``config`` (a :class:`~itcp_deploy.profiling.profiler.ProfileConfig`) builds
    them: at any precision but mixed, ``plans``. At mixed, each prunable group is INT8 in a random half of the
    plans not settled yet (never in the dense one, the FP32 reference), and of ``config.design.tries`` such draws
    the one whose fitted (not holdout) plans measure the most (layer, input precision, output precision) cells is
    kept, since the perf model fits a table per precision pair (:mod:`itcp_deploy.perfmodel.mixed`).
    A plan whose groups are settled (its id hashes them) keeps them, so adaptive rounds add plans, never redraw."""
    if config.precision != "mixed":
        return plans
    todo = [i for i, p in enumerate(plans) if p.role != "dense" and p.engine_id == engine_id(p.widths)]
    if not todo:
        return plans
    rng = random.Random(f"{config.design.seed}:" + ",".join(plans[i].engine_id for i in todo))
    names = [g.name for g in space.prunable]

    def draw() -> list[tuple[str, ...]]:
        columns = {}
        for g in names:
            column = [k % 2 == 0 for k in range(len(todo))]
            rng.shuffle(column)
            columns[g] = column
        return [tuple(sorted(g for g in names if columns[g][k])) for k in range(len(todo))]

    fitted = [i for i, p in enumerate(plans) if p.role != "holdout"]
    best = max((draw() for _ in range(max(1, config.design.tries))), key=lambda groups: _precision_cells(
        space, [dict(zip(todo, groups, strict=True)).get(i, plans[i].int8_groups) for i in fitted]))
    out = list(plans)
    for i, groups in zip(todo, best, strict=True):
        out[i] = replace(plans[i], engine_id=engine_id(plans[i].widths, groups), int8_groups=groups)
    return out


def _precision_cells(space: PruningSpace, assignments: list[tuple[str, ...]]) -> int:
    """How many (layer, input group INT8, output group INT8) cells the assignments measure."""
    return len({(layer.name, layer.in_group in a, layer.out_group in a) for a in assignments for layer in space.layers})


def _lhs(space: PruningSpace, n: int, rng: random.Random) -> list[dict[str, int]]:
    plans: list[dict[str, int]] = [{} for _ in range(n)]
    for g in space.groups:
        k = len(g.candidates)
        picks = [g.candidates[min(k - 1, int((i + rng.random()) * k / n))] for i in range(n)]
        rng.shuffle(picks)
        for plan, w in zip(plans, picks, strict=True):
            plan[g.name] = w
    return plans


FOCUS_BAND = 0.2  # focused plans draw each group's width fraction within sqrt(focus) +- this


def _near(space: PruningSpace, focus: float) -> PruningSpace:
    """``space`` with each group's candidates cut to those near ``sqrt(focus)`` of its width (at least the
    one nearest), for drawing plans where the search will look."""
    mid = focus ** 0.5
    groups = []
    for g in space.groups:
        near = tuple(w for w in g.candidates if abs(w / g.full_width - mid) <= FOCUS_BAND)
        groups.append(replace(g, candidates=near or (min(g.candidates, key=lambda w: abs(w / g.full_width - mid)),)))
    return replace(space, groups=tuple(groups))


def _coverage(space: PruningSpace, plans: list[dict[str, int]]) -> int:
    return len({(layer.name, p[layer.in_group], p[layer.out_group]) for p in plans for layer in space.layers})


def design_plans(space: PruningSpace, config: DesignConfig | None = None) -> list[PlannedEngine]:
    """The plans to build (see the module docstring), at most ``config.max_builds`` of them.

    Raises:
        UsageError: ``max_builds`` cannot hold the dense plan, the minimum plan and the holdouts.
    """
    config = config or DesignConfig()
    n_design = config.max_builds - config.holdout - 2
    if config.holdout < 0 or n_design < 0:
        raise UsageError(
            f"--max-builds {config.max_builds} cannot hold the dense plan, the minimum plan "
            f"and {config.holdout} holdouts",
            f"use --max-builds >= {config.holdout + 2}",
        )
    rng = random.Random(config.seed)
    dense = space.full_widths()
    minimum = {g.name: g.candidates[0] for g in space.groups}
    n_focus = n_design // 2 if config.focus else 0
    near = _near(space, config.focus) if config.focus else space
    best = (
        max(
            (_lhs(space, n_design - n_focus, rng) + _lhs(near, n_focus, rng) for _ in range(max(1, config.tries))),
            key=lambda plans: _coverage(space, [dense, minimum, *plans]),
        )
        if n_design
        else []
    )
    out = [PlannedEngine(engine_id(dense), "dense", dense)]
    seen = {out[0].engine_id}
    for plan in [minimum, *best]:
        if engine_id(plan) not in seen:
            seen.add(engine_id(plan))
            out.append(PlannedEngine(engine_id(plan), "design", plan))
    _add_random(out, seen, space, rng, "design", n_design + 2 - len(out))  # replace duplicate designs
    near_holdouts = config.holdout // 2 if config.focus else 0  # validated where it is fitted, and searched
    _add_random(out, seen, space, rng, "holdout", config.holdout - near_holdouts)
    _add_random(out, seen, near, rng, "holdout", near_holdouts)
    return out


def _add_random(
    out: list[PlannedEngine], seen: set[str], space: PruningSpace, rng: random.Random, role: str, count: int
) -> None:
    """Append up to ``count`` uniformly random plans not seen yet (fewer if the space runs out)."""
    added = 0
    for _ in range(100 * max(1, count)):
        if added >= count:
            return
        plan = {g.name: rng.choice(g.candidates) for g in space.groups}
        if engine_id(plan) not in seen:
            seen.add(engine_id(plan))
            out.append(PlannedEngine(engine_id(plan), role, plan))
            added += 1


def first_round(space: PruningSpace, config: DesignConfig) -> list[PlannedEngine]:
    """The plans of an adaptive profile's first round (see the module docstring)."""
    holdout = min(config.holdout, ROUND_HOLDOUT, config.max_builds // 3)
    return design_plans(space, replace(config, max_builds=max(min(FIRST_BUILDS, config.max_builds), holdout + 2),
                                       holdout=holdout))


def next_round(space: PruningSpace, plans: list[PlannedEngine], weights: dict[str, float], config: DesignConfig,
               round_index: int) -> list[PlannedEngine]:
    """``plans`` with the next round's changes (see the module docstring); at most ``config.max_builds``."""
    step = min(STEP_BUILDS, config.max_builds - len(plans))
    rng = random.Random(f"{config.seed}:{round_index}")
    holdouts = [p for p in plans if p.role == "holdout"]
    moved = {p.engine_id for p in holdouts[: min(2, len(holdouts), step)]}
    out = [replace(p, role="design") if p.engine_id in moved else p for p in plans]
    seen = {p.engine_id for p in out}
    near = _near(space, config.focus) if config.focus else space
    _add_random(out, seen, space, rng, "holdout", len(moved) - len(moved) // 2)
    _add_random(out, seen, near, rng, "holdout", len(moved) // 2)
    cells = {c for p in out if p.role != "holdout" for c in _cells(space, p.widths)}
    for i in range(step - len(moved)):
        drawn = near if i % 2 else space  # with a focus, every other targeted design is drawn near it
        pool = [{g.name: rng.choice(g.candidates) for g in drawn.groups} for _ in range(config.tries)]
        pool = [w for w in pool if engine_id(w) not in seen]
        if not pool:
            break
        best = max(pool, key=lambda w: sum(weights.get(c[0], 0.0) + 1e-3 for c in _cells(space, w) - cells))
        seen.add(engine_id(best))
        cells |= _cells(space, best)
        out.append(PlannedEngine(engine_id(best), "design", best))
    return out


def _cells(space: PruningSpace, widths: dict[str, int]) -> set[tuple[str, int, int]]:
    w = space.complete(widths)
    return {(layer.name, w[layer.in_group], w[layer.out_group]) for layer in space.layers}


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"1/4"`` -> (1, 4): shard index (0-based) and count; ``None`` -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        index, count = (int(p) for p in text.split("/"))
    except ValueError:
        raise UsageError(f"malformed --shard {text!r}", "write it as i/n, e.g. --shard 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {text!r} is out of range", "use i/n with 0 <= i < n") from None
    return index, count


def shard(plans: list[PlannedEngine], index: int, count: int) -> list[PlannedEngine]:
    """Every ``count``-th plan starting at ``index``: shards are disjoint and together cover all plans."""
    return plans[index::count]
