"""The closed loop's budget correction, from every round so far (pure: numbers in, a number out).

Scaling the last budget by target / measured forgets what earlier rounds showed: on a staircase latency (the
DP's plans jump between widths) with measurement noise it can overshoot back and forth (issue 14: budgets
0.335, 0.267, 0.432, 0.343 ms measured 0.405, 0.200, 0.407, 0.331 x dense for a 0.323 x target). Here the
rounds keep a bracket, [largest budget that met the target, smallest budget that missed it], and the next
budget is a secant step inside it (measured vs budget, interpolated), or its midpoint when the secant leaves
the bracket or the two ends are not monotone. Outside a bracket (every round met, or every round missed) the
step is the ratio step. The loop aims at the middle of the acceptance band, so noise on either side stays in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Round:
    """One round: the predicted budget solved for, the measured latency (same unit as the target), the
    plan's score."""

    budget: float
    measured: float
    score: float = 0.0


def aim(target: float, accept_low: float) -> float:
    """The latency the next round aims at: the middle of the band ``[accept_low * target, target]``."""
    return target * (1.0 + accept_low) / 2.0


def bracket(rounds: Sequence[Round], target: float) -> tuple[Round | None, Round | None]:
    """(largest-budget round that met the target below the smallest that missed, smallest that missed).

    A round that met at a budget above one that missed (noise, or a non-monotone staircase) is not used as
    the lower end: the bracket must hold the budget that lands in the band.
    """
    missed = [r for r in rounds if r.measured > target]
    hi = min(missed, key=lambda r: r.budget) if missed else None
    met = [r for r in rounds if r.measured <= target and (hi is None or r.budget < hi.budget)]
    lo = max(met, key=lambda r: r.budget) if met else None
    return lo, hi


def next_budget(rounds: Sequence[Round], target: float, accept_low: float, rel_tol: float = 1e-3) -> float | None:
    """The budget of the next round, or None when the bracket has collapsed (narrower than ``rel_tol`` of its
    upper end: no budget between a plan that is too fast and one that is too slow is left to try)."""
    if not rounds:
        raise ValueError("next_budget needs at least one measured round")
    goal = aim(target, accept_low)
    lo, hi = bracket(rounds, target)
    if lo is None or hi is None:
        return _one_sided(rounds, lo or hi, goal)
    if hi.budget - lo.budget <= rel_tol * hi.budget:
        return None
    midpoint = (lo.budget + hi.budget) / 2.0
    if hi.measured <= lo.measured:  # not monotone between the ends: nothing to interpolate
        return midpoint
    step = lo.budget + (goal - lo.measured) * (hi.budget - lo.budget) / (hi.measured - lo.measured)
    margin = rel_tol * hi.budget
    return step if lo.budget + margin < step < hi.budget - margin else midpoint


def _one_sided(rounds: Sequence[Round], edge: Round | None, goal: float) -> float:
    """Every round on one side of the target: extrapolate the secant through the edge and its nearest
    neighbour on that side when it is monotone (at most 4x the edge's budget away), else the ratio step."""
    assert edge is not None
    ratio_step = edge.budget * goal / edge.measured
    side = sorted((r for r in rounds if (r.measured > goal) == (edge.measured > goal) and r is not edge),
                  key=lambda r: abs(r.budget - edge.budget))
    if not side or side[0].budget == edge.budget or side[0].measured == edge.measured:
        return ratio_step
    other = side[0]
    slope = (edge.measured - other.measured) / (edge.budget - other.budget)
    if slope <= 0:
        return ratio_step
    step = edge.budget + (goal - edge.measured) / slope
    return float(min(max(step, edge.budget / 4.0), edge.budget * 4.0))


def best_met(rounds: Sequence[Round], target: float) -> int | None:
    """Index of the highest-scoring round that met the target (the plan to keep when none landed in the band),
    None if every round missed."""
    met = [i for i, r in enumerate(rounds) if r.measured <= target]
    return max(met, key=lambda i: rounds[i].score) if met else None


def accepted(r: Round, target: float, accept_low: float) -> bool:
    """Whether a round landed in the acceptance band."""
    return accept_low * target <= r.measured <= target
