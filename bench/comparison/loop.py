"""The comparison's search rows land where ``run`` lands them: at or under ``1 / speed-up`` *measured*.

A plan solved for the predicted budget (dense predicted / speed-up) measures a little above or below it; the
peer (:mod:`bench.comparison.peer`) bisects to the measured ratio. So every search method goes
through the closed loop's own rounds (:func:`~itcp_deploy.pipeline.round_search.search_rounds`): its engine is
built and measured interleaved with the dense engine, and the budget corrected until the ratio lands in
``[accept_low, 1] x (1 / speed-up)``, with ``run``'s acceptance band and round limit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.comparison.rows import Bench, dense_meter, engine_of
from itcp_deploy.pipeline.config import LoopSettings
from itcp_deploy.pipeline.round_search import RoundSearch, search_rounds

if TYPE_CHECKING:
    from itcp_deploy.search import Solution
    from itcp_deploy.search.baselines import SearchInputs


def search_inputs(b: Bench, remove: bool) -> SearchInputs:
    """The search's view of the bench: with width 0 for removable groups (``remove``, block removal), or
    without it (the perf model's and the scores' width-0 entries dropped)."""
    from itcp_deploy.perfmodel.model import on_space
    from itcp_deploy.search.baselines import SearchInputs

    space = b.space.with_removal(remove)
    scores = {g.name: b.scores[g.name][[b.space.group(g.name).index(w) for w in g.candidates]]
              for g in space.prunable}
    return SearchInputs(space, on_space(b.perf, space), scores, b.importance)


def measured_solution(b: Bench, method: str, inputs: SearchInputs, speedup: float, budget: float, *,
                      label: str = "") -> tuple[Solution, dict[str, Any]]:
    """The plan of ``method`` whose engine measured at or under ``1 / speedup`` x dense (else the loop's
    fallback), and the row fields that say how it was found (``loop``: every round; ``loop_ratio``,
    ``met_target``)."""
    from itcp_deploy.pruning import apply_widths
    from itcp_deploy.search.baselines import run_method
    from itcp_deploy.search.dp import min_latency_ms

    engines = b.out / "engines" / "engines"
    meter = dense_meter(b, speedup)
    loop = LoopSettings()

    def measure(solution: Solution, _round: int) -> tuple[float, dict]:
        pruned = apply_widths(b.model, b.space, solution.widths, importance=b.importance)
        engine = engine_of(b, pruned, {**b.space.full_widths(), **solution.widths})
        ratio = meter.measure(engines / engine).ratio
        return ratio, {"ratio_to_dense": ratio, "engine": engine}

    bounds = RoundSearch(target=1.0 / speedup, accept_low=loop.accept_low, first_budget=budget,
                         max_rounds=loop.max_rounds, min_predicted=min_latency_ms(inputs.perf_model))
    solution, final_budget, state = search_rounds(
        bounds, lambda ms: run_method(method, inputs, ms, bins=b.config.bins), measure,
        lambda msg: b.log(f"{label or method} x{speedup:g} {msg}"))
    kept = next(r for r in state.records if r["widths"] == solution.widths)
    return solution, {"budget_ms": final_budget, "loop_ratio": kept["ratio_to_dense"],
                      "met_target": kept["ratio_to_dense"] <= bounds.target,
                      "loop": [{k: v for k, v in r.items() if k != "widths"} for r in state.records],
                      "loop_notes": state.notes}


__all__ = ["measured_solution"]
