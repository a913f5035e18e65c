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
from itcp_deploy.pipeline.meter import Measured, TargetMeter
from itcp_deploy.pipeline.round_search import Rounds, RoundSearch, search_rounds
from itcp_deploy.pipeline.run_dir import RunFolder
from itcp_deploy.space import PruningSpace

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


def run_meter(config: RunConfig, dense_artifact: Path, dense_ms: float | None = None) -> TargetMeter:
    """The run's target measured against its dense engine (``dense_ms``: the dense latency an earlier stage
    measured, else measured on first use)."""
    return TargetMeter(config.engine, config.target, dense_artifact, config.loop.timing, config.loop.max_timing_rounds,
                       dense_ms)


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


def _measure_round(inputs: LoopInputs, meter: TargetMeter, solution: Solution, r: int) -> Measured:
    """Prune to the plan, build its engine and measure it against dense, long enough for the margin to cover
    the noise."""
    from itcp_deploy.engines.build import build_engine
    from itcp_deploy.pruning import apply_widths

    c = inputs.config
    pruned = apply_widths(inputs.model, inputs.space, solution.widths, importance="l1")
    built = build_engine(pruned, c.input_shape, inputs.folder.rounds, f"round{r}", c.engine)
    return meter.measure(built.artifact, precise=True)


def _run_rounds(inputs: LoopInputs, perf: PerfModel, meter: TargetMeter, log: Log) -> tuple[Solution, float, Rounds]:
    """Solve, measure, correct (:func:`~itcp_deploy.pipeline.round_search.search_rounds`, in measured ms)."""
    from itcp_deploy.search.baselines import run_method
    from itcp_deploy.search.dp import min_latency_ms

    c = inputs.config
    search_inputs = _search_inputs(inputs, perf)

    dense_ms = meter.dense_ms()

    def measure(solution: Solution, r: int) -> tuple[float, dict]:
        m = _measure_round(inputs, meter, solution, r)
        return m.measured_ms, {"measured_ms": m.measured_ms, "ratio_to_dense": m.ratio,
                               "timing_rounds": m.timing_rounds}

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
    meter = run_meter(c, inputs.dense_artifact)
    dense_ms = meter.dense_ms()
    _check_reachable(inputs, perf, dense_ms)
    log(f"dense {dense_ms:.4f} ms measured, {perf.dense_ms():.4f} ms predicted; "
        f"{c.target.describe(dense_ms)}, target {c.target.target_ms(dense_ms):.4f} ms")
    accepted, budget, state = _run_rounds(inputs, perf, meter, log)
    plan = PruningPlan(model=c.model, input_shape=tuple(c.input_shape),
                       widths={g.name: accepted.widths[g.name] for g in inputs.space.prunable},
                       method=c.method, criterion=c.criterion, importance=c.importance, budget_ms=budget,
                       predicted_ms=accepted.cost, score=accepted.score, weights=c.weights,
                       pareto=[(float(a), float(b)) for a, b in accepted.front])
    plan.save(inputs.folder.plan)
    return {"sla_ms": c.target.resolve_ms(dense_ms), "target_ms": state.target, "dense_measured_ms": dense_ms,
            "rounds": state.records, "notes": state.notes}
