"""ITCP and the baselines it is compared with, behind one interface (``SEARCH_METHODS``).

Every method gets the same :class:`SearchInputs` and latency budget and returns a
:class:`~itcp_deploy.search.dp.Solution` whose *predicted* latency (the perf model's) is <= the budget.
Baselines reach the budget by bisection on their own knob:

* ``uniform``: one keep ratio for every group (widths rounded to the nearest candidate).
* ``flops``: the exact DP with MACs in place of latency; bisection on the MACs budget.
* ``global-magnitude``: one threshold on per-channel importance (each group's normalised by its mean),
  Torch-Pruning style; bisection on the threshold.
* ``knapsack-linear``: HALP style; each group's latency linearised at full width (marginal ms per channel
  of each of its layers, summed) and the resulting knapsack solved exactly (a DP with unary terms only);
  bisection on its budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from itcp_deploy.perfmodel.model import PerfModel
from itcp_deploy.registry import Registry
from itcp_deploy.search.bisection import bisect_index, bisect_knob
from itcp_deploy.search.dp import FrontSolver, Solution, solve
from itcp_deploy.search.problem import SearchProblem, Term, problem_from, problem_from_macs
from itcp_deploy.space import PruningSpace


@dataclass
class SearchInputs:
    """What every search method may use. ``channel_importance``: per group, one value per channel (only
    ``global-magnitude`` needs it; derived from ``scores`` when absent)."""

    space: PruningSpace
    perf_model: PerfModel
    scores: dict[str, np.ndarray]
    channel_importance: dict[str, np.ndarray] | None = None
    int8_cost: dict[str, float] | None = None  # a mixed-precision perf model's: each group's INT8 cost
    fp32_groups: tuple[str, ...] = ()  # a mixed search's groups held at fp32 (the final stage's precision control)

    def problem(self) -> SearchProblem:
        """Over widths; over (width, precision) states when the perf model is mixed-precision
        (:mod:`itcp_deploy.search.precision`)."""
        if self.perf_model.precision_tables:
            from itcp_deploy.search.precision import problem_from_mixed

            return problem_from_mixed(self.space, self.perf_model, self.scores, self.int8_cost or {},
                                      self.fp32_groups)
        return problem_from(self.space, self.perf_model, self.scores)


Method = Callable[[SearchInputs, float, int], Solution]
SEARCH_METHODS: Registry[Method] = Registry("search method")


def _solution(inputs: SearchInputs, problem: SearchProblem, widths: dict[str, int], method: str) -> Solution:
    return Solution(widths, problem.cost(widths), problem.score(widths), [], True, method)


@SEARCH_METHODS.register("itcp")
def search_itcp(inputs: SearchInputs, budget_ms: float, bins: int = 1000) -> Solution:
    """The exact DP on the staircase-aware perf model."""
    return solve(inputs.problem(), budget_ms, bins=bins)


@SEARCH_METHODS.register("uniform")
def search_uniform(inputs: SearchInputs, budget_ms: float, bins: int = 1000) -> Solution:
    problem = inputs.problem()

    def plan_for(ratio: float) -> dict[str, int]:
        return {
            g: c[int(np.argmin([abs(w - ratio * c[-1]) - 1e-9 * w for w in c]))]
            for g, c in problem.candidates.items()
        }

    return _solution(inputs, problem, bisect_knob(plan_for, problem.cost, budget_ms, 0.0, 1.0), "uniform")


def _proxy_search(
    inputs: SearchInputs, proxy: SearchProblem, budget_ms: float, bins: int, method: str
) -> Solution:
    """Solve the proxy once over its whole range, then bisect on its budget bins for the true budget."""
    problem = inputs.problem()
    solver = FrontSolver(proxy, proxy.cost(proxy.widest()), bins=bins)
    plan = bisect_index(solver.plan_at, problem.cost, budget_ms, 0, bins)
    return Solution(plan, problem.cost(plan), problem.score(plan), [], solver.exact, method)


@SEARCH_METHODS.register("flops")
def search_flops(inputs: SearchInputs, budget_ms: float, bins: int = 1000) -> Solution:
    return _proxy_search(inputs, problem_from_macs(inputs.space, inputs.scores), budget_ms, bins, "flops")


def _secant(costs: np.ndarray, widths: tuple[int, ...], rel_step: float = 0.05) -> float:
    """Latency per channel from full width down to the first narrower candidate that costs ``rel_step``
    less (measurement noise is not a step), else down to the narrowest candidate."""
    k = next((k for k in range(len(widths) - 2, -1, -1) if costs[-1] - costs[k] > rel_step * abs(costs[-1])), 0)
    return float((costs[-1] - costs[k]) / (widths[-1] - widths[k]))


def linear_slopes_ms(space: PruningSpace, perf_model: PerfModel) -> dict[str, float]:
    """Per group, the latency of one channel at full width, summed over its layers (>= 0).

    The marginal step is taken to the first narrower candidate that is measurably cheaper: on a staircase
    the nearest candidate often costs the same, which would make every channel look free.
    """
    slopes = {g.name: 0.0 for g in space.prunable if len(g.candidates) > 1}
    for layer in space.layers:
        t = perf_model.layer_table(layer.name)
        cin, cout = space.group(layer.in_group).candidates, space.group(layer.out_group).candidates
        if layer.in_group == layer.out_group:
            if layer.in_group in slopes:
                slopes[layer.in_group] += _secant(np.diagonal(t), cin)
            continue
        if layer.in_group in slopes:
            slopes[layer.in_group] += _secant(t[:, -1], cin)
        if layer.out_group in slopes:
            slopes[layer.out_group] += _secant(t[-1, :], cout)
    return {g: max(float(s), 0.0) for g, s in slopes.items()}


@SEARCH_METHODS.register("knapsack-linear")
def search_knapsack_linear(inputs: SearchInputs, budget_ms: float, bins: int = 1000) -> Solution:
    problem = inputs.problem()
    slopes = linear_slopes_ms(inputs.space, inputs.perf_model)
    terms = [
        Term(g, g, np.diag(s * np.asarray(problem.candidates[g], dtype=float))) for g, s in slopes.items()
    ]
    proxy = SearchProblem(problem.candidates, problem.scores, terms, 0.0)
    return _proxy_search(inputs, proxy, budget_ms, bins, "knapsack-linear")


def importance_from_scores(candidates: tuple[int, ...], scores: np.ndarray) -> np.ndarray:
    """Per-channel importance implied by candidate scores: each step's score gain spread over its channels
    (a width-0 candidate, a removed block, is left out: the steps start at 0 channels anyway)."""
    kept = np.asarray(candidates) > 0
    widths = np.concatenate([[0], np.asarray(candidates)[kept]])
    gains = np.diff(np.concatenate([[0.0], np.asarray(scores, dtype=float)[kept]]))
    per = np.maximum(gains, 0.0) / np.diff(widths)
    return np.repeat(per, np.diff(widths))


@SEARCH_METHODS.register("global-magnitude")
def search_global_magnitude(inputs: SearchInputs, budget_ms: float, bins: int = 1000) -> Solution:
    problem = inputs.problem()
    given = inputs.channel_importance or {}
    norm = {}
    for g in inputs.space.prunable:
        if len(g.candidates) > 1:
            imp = np.asarray(given.get(g.name, importance_from_scores(g.candidates, problem.scores[g.name])))
            norm[g.name] = imp / max(float(np.mean(imp)), 1e-30)
    top = max((float(v.max()) for v in norm.values()), default=0.0) + 1.0

    def plan_for(knob: float) -> dict[str, int]:  # knob = -threshold: larger keeps more channels
        plan = problem.widest()
        for g, imp in norm.items():
            kept = int(np.sum(imp >= -knob))
            plan[g] = next((c for c in problem.candidates[g] if c >= kept), problem.candidates[g][-1])
        return plan

    return _solution(
        inputs, problem, bisect_knob(plan_for, problem.cost, budget_ms, -top, 0.0), "global-magnitude"
    )


def run_method(name: str, inputs: SearchInputs, budget_ms: float, *, bins: int = 1000) -> Solution:
    """Look up a method by name and run it; every method's plan is predicted at <= ``budget_ms``."""
    return SEARCH_METHODS.get(name)(inputs, budget_ms, bins)
