"""The comparison's search rows land where ``run`` lands them: at or under ``1 / speed-up`` *measured*.

A plan solved for the predicted budget (dense predicted / speed-up) measures a little above or below it; the
peer (:mod:`bench.comparison.peer`) bisects to the measured ratio. So every search method goes
through the closed loop's own rounds (:func:`~itcp_deploy.pipeline.closed_loop.run_rounds`): its engine is
built and measured interleaved with the dense engine, and the budget corrected until the ratio lands in
``[accept_low, 1] x (1 / speed-up)``, with ``run``'s acceptance band and round limit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.comparison.rows import Bench, dense_meter, engine_of
from itcp_deploy.pipeline.config import LoopSettings

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
    ``met_target``). The loop is ``run``'s (:func:`~itcp_deploy.pipeline.closed_loop.run_rounds`), one target."""
    from itcp_deploy.pipeline.closed_loop import Rounds, run_rounds
    from itcp_deploy.pruning import apply_widths
    from itcp_deploy.search.baselines import run_method
    from itcp_deploy.search.dp import min_latency_ms
    from itcp_deploy.search.vector import vector_solution

    engines = b.out / "engines" / "engines"
    meter, loop, problems = dense_meter(b, speedup), LoopSettings(), [inputs.problem()]
    solutions: dict[tuple, Solution] = {}

    def solve(budgets: list[float]):
        sol = run_method(method, inputs, budgets[0], bins=b.config.bins)
        solutions[tuple(sorted(sol.widths.items()))] = sol
        return vector_solution(problems, budgets, sol.widths, exact=sol.exact, method=method)

    def measure(widths: dict[str, int], _round: int) -> list[dict]:
        pruned = apply_widths(b.model, b.space, widths, importance=b.importance)
        engine = engine_of(b, pruned, {**b.space.full_widths(), **widths})
        m = meter.measure(engines / engine)
        return [{"measured_ms": m.ratio, "ratio_to_dense": m.ratio, "engine": engine}]

    rounds = Rounds([label or method], [1.0 / speedup], [min_latency_ms(inputs.perf_model)])
    chosen = run_rounds(rounds, [budget], solve, measure, accept_low=loop.accept_low, max_rounds=loop.max_rounds,
                        log=lambda msg: b.log(f"{label or method} x{speedup:g} {msg}"))
    kept = rounds.records[rounds.solutions.index(chosen)]["targets"][0]
    return solutions[tuple(sorted(chosen.widths.items()))], {
        "budget_ms": kept["budget_ms"], "loop_ratio": kept["ratio_to_dense"],
        "met_target": kept["ratio_to_dense"] <= 1.0 / speedup,
        "loop": [{"round": r["round"], **{k: v for k, v in r["targets"][0].items() if k != "name"}}
                 for r in rounds.records], "loop_notes": rounds.notes}


__all__ = ["measured_solution"]
