"""The search: an exact DP over channel-group widths under a predicted-latency budget, and baselines.

Pure data and numpy (no torch, no backends); matplotlib only inside :mod:`itcp_deploy.search.plot`.
"""

from itcp_deploy.search.baselines import SEARCH_METHODS, SearchInputs, run_method
from itcp_deploy.search.dp import FrontSolver, Solution, SolverLimits, min_cost, min_latency_ms, solve
from itcp_deploy.search.problem import SearchProblem, Term, problem_from, problem_from_macs

__all__ = [
    "SEARCH_METHODS",
    "FrontSolver",
    "SearchInputs",
    "SearchProblem",
    "Solution",
    "SolverLimits",
    "Term",
    "min_cost",
    "min_latency_ms",
    "problem_from",
    "problem_from_macs",
    "run_method",
    "solve",
]
