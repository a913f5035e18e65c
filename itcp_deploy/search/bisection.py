"""Bisection on a baseline's own knob until its plan's predicted latency meets the budget."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from itcp_deploy.errors import InfeasibleError

Plan = dict[str, int]


def bisect_knob(
    plan_for: Callable[[float], Plan],
    cost: Callable[[Mapping[str, int]], float],
    budget: float,
    lo: float,
    hi: float,
    iters: int = 40,
) -> Plan:
    """The plan at the largest knob in ``[lo, hi]`` whose cost is <= ``budget``.

    Assumes the cost grows with the knob (it may wobble: latency staircases are not monotone), so the result
    is feasible but not necessarily the last feasible knob.

    Raises:
        InfeasibleError: even ``plan_for(lo)`` is over budget.
    """
    best = plan_for(lo)
    low_cost = cost(best)
    if low_cost > budget:
        raise InfeasibleError(
            f"no plan of this method meets the budget {budget:.4g} ms: its cheapest plan is "
            f"predicted at {low_cost:.4g} ms",
            f"raise the budget to at least {low_cost:.4g} ms",
        )
    top = plan_for(hi)
    if cost(top) <= budget:
        return top
    for _ in range(iters):
        mid = (lo + hi) / 2
        plan = plan_for(mid)
        if cost(plan) <= budget:
            lo, best = mid, plan
        else:
            hi = mid
    return best


def bisect_index(
    plan_for: Callable[[int], Plan],
    cost: Callable[[Mapping[str, int]], float],
    budget: float,
    lo: int,
    hi: int,
) -> Plan:
    """Integer version of :func:`bisect_knob` (e.g. over the budget bins of a proxy DP)."""
    best = plan_for(lo)
    if cost(best) > budget:
        raise InfeasibleError(
            f"no plan of this method meets the budget {budget:.4g} ms: its cheapest plan is "
            f"predicted at {cost(best):.4g} ms",
            f"raise the budget to at least {cost(best):.4g} ms",
        )
    while lo < hi:
        mid = (lo + hi + 1) // 2
        plan = plan_for(mid)
        if cost(plan) <= budget:
            lo, best = mid, plan
        else:
            hi = mid - 1
    return best
