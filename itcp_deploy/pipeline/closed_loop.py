"""The closed SLA loop: solve -> prune -> build -> measure against the dense engine -> correct the budget.

The perf model predicts; only a measured engine decides. Each round solves for a predicted budget, builds the
plan's engine and measures it interleaved with the dense engine. A plan is accepted when its measured latency
lies in ``[accept_low * target, target]`` (target = SLA minus a safety margin, see
:class:`~itcp_deploy.target.LatencyTarget`). Otherwise the next budget comes from every round so far
(:mod:`~itcp_deploy.pipeline.budget_search`: a bracket of met/missed budgets, secant or bisection inside it)
and the DP re-solves; a plan that undershoots a lot is relaxed the same way, because over-pruning wastes
accuracy. After ``max_rounds`` (or once the bracket has collapsed) the best plan that met the target is kept,
or the loop gives up and says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from itcp_deploy.errors import InfeasibleError
from itcp_deploy.pipeline.config import RunConfig
from itcp_deploy.pipeline.round_search import Rounds, RoundSearch, search_rounds
from itcp_deploy.pipeline.round_timing import measure_precise
from itcp_deploy.pipeline.run_dir import RunFolder
from itcp_deploy.profiling.engine_timing import EngineLatency, measure_engines
from itcp_deploy.profiling.records import LatencyStats
from itcp_deploy.profiling.timing import TimingConfig
from itcp_deploy.space import PruningSpace
from itcp_deploy.target import Measurement

if TYPE_CHECKING:
    from torch import nn

    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.search import Solution

Log = Callable[[str], None]


@dataclass
class LoopInputs:
    """The dense model and its space, the run's config and folder, the dense engine, the group scores."""

    model: nn.Module
    space: PruningSpace
    folder: RunFolder
    config: RunConfig
    dense_artifact: Path
    scores: dict[str, np.ndarray]


def measure_pair(config: RunConfig, artifact: Path, dense_artifact: Path,
                 timing: TimingConfig) -> tuple[EngineLatency, LatencyStats]:
    """A candidate engine measured interleaved with the dense engine: its latency (with the median per-round
    ratio to dense at the target's percentile) and the dense engine's stats."""
    measured = measure_engines(config.engine.backend, [artifact], config.engine.options, timing,
                               reference=dense_artifact, percentile=config.target.percentile)
    return measured.engines[0], measured.reference


def _dense_latency_ms(inputs: LoopInputs) -> float:
    c = inputs.config
    measured = measure_engines(c.engine.backend, [inputs.dense_artifact], c.engine.options, c.loop.timing)
    return measured.engines[0].stats.percentile_ms(c.target.percentile)


def _search_inputs(inputs: LoopInputs, perf: PerfModel):
    from itcp_deploy.search.baselines import SearchInputs

    importance = None
    if inputs.config.method == "global-magnitude":
        from itcp_deploy.pruning import channel_importance

        importance = channel_importance(inputs.model, inputs.space, "l1")
    return SearchInputs(inputs.space, perf, inputs.scores, importance)


def _check_reachable(inputs: LoopInputs, perf: PerfModel, dense_ms: float) -> None:
    from itcp_deploy.search.dp import min_latency_ms

    t = inputs.config.target
    sla_ms, target_ms = t.resolve_ms(dense_ms), t.target_ms(dense_ms)
    min_predicted = min_latency_ms(perf)
    min_ms = min_predicted * dense_ms / perf.dense_ms()  # in measured ms on this machine now
    if target_ms < min_ms:
        raise InfeasibleError(
            f"SLA {sla_ms:.4g} ms (target {target_ms:.4g} ms with the {t.margin:.0%} margin) is below the "
            f"fastest reachable plan, about {min_ms:.4g} ms measured ({min_predicted:.4g} ms predicted)",
            f"ask for at least {min_ms / (1 - t.margin):.4g} ms, or a model with a smaller minimum width")


def _measure_round(inputs: LoopInputs, solution: Solution, r: int, dense_ms: float) -> tuple[float, float, int]:
    """Prune to the plan, build its engine and measure it against dense, long enough for the margin to cover
    the noise: (judged latency ms, ratio, timing rounds used)."""
    from itcp_deploy.engines.build import build_engine
    from itcp_deploy.pruning import apply_widths

    c = inputs.config
    pruned = apply_widths(inputs.model, inputs.space, solution.widths, importance="l1")
    built = build_engine(pruned, c.input_shape, inputs.folder.rounds, f"round{r}", c.engine)
    latency, timing_rounds = measure_precise(
        lambda t: measure_pair(c, built.artifact, inputs.dense_artifact, t)[0], c.loop.timing, c.target.margin,
        c.loop.max_timing_rounds)
    measurement = Measurement(latency.stats.percentile_ms(c.target.percentile), latency.ratio)
    return c.target.measured_ms(measurement, dense_ms), float(latency.ratio), timing_rounds


def _run_rounds(inputs: LoopInputs, perf: PerfModel, dense_ms: float, log: Log) -> tuple[Solution, float, Rounds]:
    """Solve, measure, correct (:func:`~itcp_deploy.pipeline.round_search.search_rounds`, in measured ms)."""
    from itcp_deploy.search.baselines import run_method
    from itcp_deploy.search.dp import min_latency_ms

    c = inputs.config
    search_inputs = _search_inputs(inputs, perf)

    def measure(solution: Solution, r: int) -> tuple[float, dict]:
        measured, ratio, timing_rounds = _measure_round(inputs, solution, r, dense_ms)
        return measured, {"measured_ms": measured, "ratio_to_dense": ratio, "timing_rounds": timing_rounds}

    bounds = RoundSearch(target=c.target.target_ms(dense_ms), accept_low=c.loop.accept_low,
                         first_budget=c.target.predicted_budget_ms(dense_ms, perf.dense_ms()),
                         max_rounds=c.loop.max_rounds, min_predicted=min_latency_ms(perf))
    return search_rounds(bounds, lambda budget: run_method(c.method, search_inputs, budget, bins=c.loop.bins),
                         measure, log)


def closed_loop(inputs: LoopInputs, log: Log) -> dict:
    """Run the loop; writes the chosen plan (with its Pareto front) to ``folder.plan`` and returns the rounds.

    Raises:
        InfeasibleError: the SLA is below the fastest plan the perf model can reach (names that latency).
    """
    from itcp_deploy.perfmodel.model import PerfModel
    from itcp_deploy.plan import PruningPlan

    c = inputs.config
    perf = PerfModel.load(inputs.folder.perf_model)
    inputs = replace(inputs, space=perf.space)  # the space the perf model and scores were made on (block removal)
    dense_ms = _dense_latency_ms(inputs)
    _check_reachable(inputs, perf, dense_ms)
    log(f"dense {dense_ms:.4f} ms measured, {perf.dense_ms():.4f} ms predicted; "
        f"{c.target.describe(dense_ms)}, target {c.target.target_ms(dense_ms):.4f} ms")
    accepted, budget, state = _run_rounds(inputs, perf, dense_ms, log)
    plan = PruningPlan(model=c.model, input_shape=tuple(c.input_shape),
                       widths={g.name: accepted.widths[g.name] for g in inputs.space.prunable},
                       method=c.method, criterion=c.criterion, importance=c.importance, budget_ms=budget,
                       predicted_ms=accepted.cost, score=accepted.score, weights=c.weights,
                       pareto=[(float(a), float(b)) for a, b in accepted.front])
    plan.save(inputs.folder.plan)
    return {"sla_ms": c.target.resolve_ms(dense_ms), "target_ms": state.target, "dense_measured_ms": dense_ms,
            "rounds": state.records, "notes": state.notes}
