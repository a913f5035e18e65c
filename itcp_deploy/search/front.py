"""Pareto fronts (predicted latency vs score) of ITCP and the baselines, for comparison plots."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from itcp_deploy.errors import InfeasibleError
from itcp_deploy.search.baselines import SearchInputs, run_method
from itcp_deploy.search.dp import solve

Front = list[tuple[float, float]]  # (predicted latency ms, score), cheapest first


def pareto_filter(points: Iterable[tuple[float, float]]) -> Front:
    """The points no other point beats on both latency (lower) and score (higher), cheapest first."""
    out: Front = []
    for cost, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or score > out[-1][1]:
            out.append((float(cost), float(score)))
    return out


def method_fronts(
    inputs: SearchInputs, methods: Sequence[str], *, points: int = 12, bins: int = 1000
) -> dict[str, Front]:
    """ITCP's front from one solve at the dense latency; each baseline's from ``points`` budgets between the
    cheapest plan and the dense latency."""
    problem = inputs.problem()
    dense_ms = problem.cost(problem.widest())
    itcp = solve(problem, dense_ms, bins=bins)
    low_ms = itcp.front[0][0]
    fronts: dict[str, Front] = {}
    for name in methods:
        if name == "itcp":
            fronts[name] = pareto_filter(itcp.front)
            continue
        found = []
        for budget in np.linspace(low_ms, dense_ms, points):
            try:
                sol = run_method(name, inputs, float(budget), bins=bins)
            except InfeasibleError:
                continue
            found.append((sol.cost, sol.score))
        fronts[name] = pareto_filter(found)
    return fronts
