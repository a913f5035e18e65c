"""The closed loop's rounds, independent of what is measured: solve a predicted budget, measure the plan,
correct the budget from every round so far (:mod:`~itcp_deploy.pipeline.budget_search`), until a plan lands in
``[accept_low * target, target]``.

``itcp-deploy run`` measures each round's engine in ms against its SLA (:mod:`~itcp_deploy.pipeline.closed_loop`);
the accuracy-vs-latency benchmark measures it as a ratio to the dense engine against ``1 / speed-up``
(``bench/comparison``). Both go through :func:`search_rounds`, so a benchmark row lands where
``run`` would land it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from itcp_deploy.pipeline.budget_search import Round, accepted, best_met, next_budget

if TYPE_CHECKING:
    from itcp_deploy.search import Solution

Log = Callable[[str], None]
# measure(solution, round index) -> (measured latency in the target's unit, fields recorded for the round)
MeasureFn = Callable[["Solution", int], tuple[float, dict]]


@dataclass(frozen=True)
class RoundSearch:
    """One loop's bounds: the target and acceptance band (in the unit ``measure`` returns), the first predicted
    budget, the most rounds, and the perf model's fastest plan (ms predicted; no budget below it is solved)."""

    target: float
    accept_low: float
    first_budget: float
    max_rounds: int
    min_predicted: float


@dataclass
class Rounds:
    """What the rounds found so far: their records, notes, and every plan tried."""

    target: float
    records: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    history: list[Round] = field(default_factory=list)
    solutions: list[Solution] = field(default_factory=list)


def search_rounds(s: RoundSearch, solve: Callable[[float], Solution], measure: MeasureFn,
                  log: Log) -> tuple[Solution, float, Rounds]:
    """Solve, measure, correct; returns the accepted solution (else the fallback), its budget, the rounds."""
    state = Rounds(s.target)
    budget = s.first_budget
    for r in range(s.max_rounds):
        solution = solve(budget)
        measured, fields = measure(solution, r)
        state.records.append({"round": r, "budget_ms": budget, "predicted_ms": solution.cost, **fields,
                              "score": solution.score, "widths": solution.widths})
        log(f"round {r}: budget {budget:.4f} ms, predicted {solution.cost:.4f} ms, measured {measured:.4f} "
            f"(target {s.target:.4f})")
        # a plan that missed is placed at its predicted cost (any budget above it may return it again), one
        # that met at its budget (no budget below returns a slower plan): the bracket then always shrinks
        place = budget if measured <= s.target else solution.cost
        state.history.append(Round(place, measured, solution.score))
        state.solutions.append(solution)
        if accepted(state.history[-1], s.target, s.accept_low):
            return solution, budget, state
        new_budget = next_budget(state.history, s.target, s.accept_low)
        if new_budget is None:
            state.notes.append(f"round {r}: no budget left between the fastest plan that missed the target and "
                               "the slowest that met it; stopped")
            break
        floor = s.min_predicted * 1.01  # the DP's bins need a little room above the fastest plan
        if new_budget < floor < solution.cost:
            new_budget = floor  # the fastest plans are not tried yet: try them
        elif new_budget < floor:
            state.notes.append(f"round {r}: the corrected budget {new_budget:.4g} ms is below the perf model's "
                               f"minimum {s.min_predicted:.4g} ms; stopped")
            break
        budget = new_budget
    return _fallback(s, solution, state.records[-1]["budget_ms"], state)


def _fallback(s: RoundSearch, last: Solution, last_budget: float, state: Rounds) -> tuple[Solution, float, Rounds]:
    """No round landed in the acceptance band: the best plan that met the target, else the last one."""
    n = len(state.records)
    best = best_met(state.history, s.target)
    if best is not None:
        state.notes.append(f"no round landed in [{s.accept_low:.0%}, 100%] of the target after {n} "
                           "round(s); kept the best-scoring plan that met it")
        return state.solutions[best], state.records[best]["budget_ms"], state
    state.notes.append(f"gave up after {n} round(s): every plan measured above the target "
                       f"{s.target:.4g} (last {state.history[-1].measured:.4g}, predicted "
                       f"{state.records[-1]['predicted_ms']:.4g} ms); the perf model underestimates this backend "
                       "here, re-profile with more runs or lower the SLA")
    return last, last_budget, state


__all__ = ["RoundSearch", "Rounds", "search_rounds"]
