"""The closed SLA loop: solve -> prune -> build -> measure against the dense engine -> correct the budget.

The perf model predicts; only a measured engine decides. Each round solves for a predicted budget, builds the
plan's engine and measures it interleaved with the dense engine. A plan is accepted when its measured latency
lies in ``[accept_low * target, target]`` (target = SLA minus a safety margin). Otherwise the budget is scaled
by target / measured (the model's measured/predicted error at this point, inverted) and the DP re-solves; a
plan that undershoots a lot is relaxed the same way, because over-pruning wastes accuracy. After
``max_rounds`` the best plan that met the target is kept, or the loop gives up and says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from itcp_deploy.errors import InfeasibleError


@dataclass
class LoopInputs:
    """The dense model and its space, the run's config and output directory, the dense engine, the scores."""

    model: Any
    space: Any
    out: Path
    config: Any  # pipeline.RunConfig
    dense_artifact: Path
    scores: dict[str, np.ndarray]


def _dense_latency_ms(inputs: LoopInputs) -> float:
    from itcp_deploy.engines import get_backend
    from itcp_deploy.profiling.timing import measure

    c = inputs.config
    with get_backend(c.engine.backend).runner(inputs.dense_artifact, c.engine.options) as runner:
        return measure(runner, None, c.loop_timing).percentile_ms(c.percentile)


def _search_inputs(inputs: LoopInputs, perf):
    from itcp_deploy.search.baselines import SearchInputs

    importance = None
    if inputs.config.method == "global-magnitude":
        from itcp_deploy.pruning import channel_importance

        importance = channel_importance(inputs.model, inputs.space, "l1")
    return SearchInputs(inputs.space, perf, inputs.scores, importance)


def measure_pair(c: Any, artifact: Path, dense_artifact: Path, timing: Any):
    """Measure a candidate and the dense engine interleaved (``c``: a ``RunConfig``, ``timing``: a
    ``TimingConfig``); returns their stats and the median per-round
    latency ratio (candidate / dense) at the configured percentile."""
    from itcp_deploy.engines import get_backend
    from itcp_deploy.profiling.timing import measure_interleaved, round_ratios

    backend = get_backend(c.engine.backend)
    with backend.runner(artifact, c.engine.options) as a, backend.runner(dense_artifact, c.engine.options) as d:
        result = measure_interleaved([a, d], None, timing)
    ratios = round_ratios(result.samples_ms[0], result.samples_ms[1], c.percentile)
    return result.stats, float(np.median(ratios))



def closed_loop(inputs: LoopInputs, log) -> dict:
    """Run the loop; writes ``widths.json`` (the chosen plan, with its Pareto front) and returns the rounds.

    Raises:
        InfeasibleError: the SLA is below the fastest plan the perf model can reach (names that latency).
    """
    from itcp_deploy.engines.build import build_engine
    from itcp_deploy.perfmodel.model import PerfModel
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.pruning import apply_widths
    from itcp_deploy.search.baselines import run_method
    from itcp_deploy.search.dp import min_latency_ms

    c = inputs.config
    perf = PerfModel.load(inputs.out / "perf_model.json")
    dense_ms = _dense_latency_ms(inputs)
    sla_ms = c.sla_ms if c.sla_ms is not None else dense_ms / c.speedup
    target_ms = sla_ms * (1.0 - c.margin)
    scale = perf.dense_ms() / dense_ms  # predicted ms per measured ms on this machine now
    min_ms = min_latency_ms(perf) / scale
    if target_ms < min_ms:
        raise InfeasibleError(
            f"SLA {sla_ms:.4g} ms (target {target_ms:.4g} ms with the {c.margin:.0%} margin) is below the "
            f"fastest reachable plan, about {min_ms:.4g} ms measured ({min_latency_ms(perf):.4g} ms predicted)",
            f"ask for at least {min_ms / (1 - c.margin):.4g} ms, or a model with a smaller minimum width")
    log(f"dense {dense_ms:.4f} ms measured, {perf.dense_ms():.4f} ms predicted; SLA {sla_ms:.4f} ms, "
        f"target {target_ms:.4f} ms")
    search_inputs = _search_inputs(inputs, perf)
    budget = target_ms * scale
    rounds: list[dict] = []
    notes: list[str] = []
    best: tuple[float, Any, float] | None = None  # (score, solution, the budget it was solved for)
    accepted = None
    for r in range(c.max_rounds):
        solution = run_method(c.method, search_inputs, budget, bins=c.bins)
        solved_budget = budget
        pruned = apply_widths(inputs.model, inputs.space, solution.widths, importance="l1")
        built = build_engine(pruned, c.input_shape, inputs.out / "rounds", f"round{r}", c.engine)
        stats, ratio = measure_pair(c, built.artifact, inputs.dense_artifact, c.loop_timing)
        measured = ratio * dense_ms if c.speedup is not None else stats[0].percentile_ms(c.percentile)
        rounds.append({"round": r, "budget_ms": budget, "predicted_ms": solution.cost, "measured_ms": measured,
                       "ratio_to_dense": ratio, "score": solution.score, "widths": solution.widths})
        log(f"round {r}: budget {budget:.4f} ms, predicted {solution.cost:.4f} ms, measured {measured:.4f} ms "
            f"({ratio:.3f} x dense), target {target_ms:.4f} ms")
        if measured <= target_ms and (best is None or solution.score > best[0]):
            best = (solution.score, solution, solved_budget)
        if c.accept_low * target_ms <= measured <= target_ms:
            accepted = solution
            break
        new_budget = budget * target_ms / measured
        if new_budget * 1.0 < min_latency_ms(perf):
            notes.append(f"round {r}: the corrected budget {new_budget:.4g} ms is below the perf model's "
                         f"minimum {min_latency_ms(perf):.4g} ms; stopped")
            break
        budget = new_budget
    if accepted is None and best is not None:
        accepted, budget = best[1], best[2]
        notes.append(f"no round landed in [{c.accept_low:.0%}, 100%] of the target after {len(rounds)} "
                     "round(s); kept the best-scoring plan that met it")
    if accepted is None:
        accepted, budget = solution, solved_budget
        notes.append(f"gave up after {len(rounds)} round(s): every plan measured above the target "
                     f"{target_ms:.4g} ms (last {rounds[-1]['measured_ms']:.4g} ms, predicted "
                     f"{rounds[-1]['predicted_ms']:.4g} ms); the perf model underestimates this backend here, "
                     "re-profile with more runs or lower the SLA")
    plan = PruningPlan(model=c.model, input_shape=tuple(c.input_shape),
                       widths={g.name: accepted.widths[g.name] for g in inputs.space.prunable},
                       method=c.method, criterion=c.criterion, importance=c.importance, budget_ms=budget,
                       predicted_ms=accepted.cost, score=accepted.score, weights=c.weights,
                       pareto=[(float(a), float(b)) for a, b in accepted.front])
    plan.save(inputs.out / "widths.json")
    return {"sla_ms": sla_ms, "target_ms": target_ms, "dense_measured_ms": dense_ms, "rounds": rounds,
            "notes": notes}
