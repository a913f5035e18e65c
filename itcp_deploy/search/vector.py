"""One plan under several latency budgets: maximise the score subject to every target's predicted cost.

Each target has its own perf model, so its own :class:`SearchProblem` over the same groups and candidates
(same terms, different tables). Two targets are solved exactly on a 2-D budget grid: the DP of
:mod:`itcp_deploy.search.dp` runs unchanged on bins ``b1 * stride + b2`` (see :mod:`itcp_deploy.search.factors`),
every term's cost rounded up to whole bins in both budgets, so the plan is feasible for both and optimal for
the discretised budgets. Rounding up wastes up to a bin per term, so the grid is also solved with widened
budgets and each target's own 1-D plan is a candidate; the best candidate whose exact predicted costs meet both
budgets wins, and the exact-cost fill step spends what rounding left (:func:`solve_pair`).

More targets: Lagrangian relaxation (:func:`solve_lagrangian`). For weights ``lam`` on the simplex, every plan
that meets all budgets also meets ``sum_k lam_k * cost_k / budget_k <= 1``, one budget over one combined cost
table, which the 1-D DP solves. So each relaxed optimum bounds the true optimum from above, and each relaxed
plan that happens to meet every budget is a feasible plan. The weights are searched (exponentiated subgradient
steps toward the violated targets); the best feasible plan and the smallest upper bound are reported, so the
answer comes with its optimality gap.

Example::

    sol = solve_vector([edge_problem, server_problem], [2.0, 10.0], bins=(64, 64))
    sol.costs  # predicted ms on each target, each <= its budget
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from itcp_deploy.errors import InfeasibleError, UsageError
from itcp_deploy.search import factors as fx
from itcp_deploy.search.dp import (
    Discretised,
    FrontSolver,
    SolverLimits,
    discretise,
    merge_terms,
    min_cost,
    solve,
)
from itcp_deploy.search.problem import SearchProblem, Term

#: default 2-D grid: a ResNet-56 solve (30 groups, up to 16 candidates; three grid solves and two 1-D ones)
#: takes 1.8-2.0 s on the loaded 2-core development machine (bench/dp_speed.py --pair 32), about 3 s at 48 x 48
PAIR_BINS = (32, 32)
#: fractions of the grid's worst-case rounding waste by which the budgets are also widened (see solve_pair)
RELAX = (1.0, 0.5)


@dataclass
class VectorSolution:
    """A width plan, its score, its predicted cost on every target and which targets bind (cost within
    ``binding_pct`` of the budget)."""

    widths: dict[str, int]
    score: float
    costs: list[float]
    budgets: list[float]
    exact: bool = True
    method: str = "itcp-2d"
    binding: list[bool] = field(default_factory=list)
    bound: float = float("nan")  # Lagrangian: an upper bound on the best score; exact: the score itself


def check_same_structure(problems: Sequence[SearchProblem]) -> None:
    first = problems[0]
    for p in problems[1:]:
        same_terms = [(t.in_group, t.out_group) for t in p.terms] == [(t.in_group, t.out_group) for t in first.terms]
        if p.candidates != first.candidates or not same_terms:
            raise UsageError(
                "the targets' perf models are not over the same pruning space",
                "profile every target with the same model, input channels and --grid",
            )


def refuse_infeasible(problems: Sequence[SearchProblem], budgets: Sequence[float], names: Sequence[str]) -> None:
    """Raise :class:`InfeasibleError` naming every target's minimum predicted latency when a budget is below it."""
    lows = [min_cost(p)[0] for p in problems]
    if all(low <= b for low, b in zip(lows, budgets, strict=True)):
        return
    parts = [f"{n}: minimum {low:.4g} ms, budget {b:.4g} ms" for n, low, b in zip(names, lows, budgets, strict=True)]
    bad = [n for n, low, b in zip(names, lows, budgets, strict=True) if low > b]
    raise InfeasibleError(
        "no width plan meets every target (" + "; ".join(parts) + ")",
        f"relax the SLA of {', '.join(bad)} to at least its minimum",
    )


def discretise_pair(problems: Sequence[SearchProblem], budgets: Sequence[float], bins: tuple[int, int]) -> Discretised:
    """Both problems' merged terms as factors on one flattened ``(bins[0] + 1) x (bins[1] + 1)`` grid."""
    merged = [merge_terms(p) for p in problems]
    b1, b2 = bins
    stride = 2 * b2 + 1  # two valid second coordinates never sum past the stride: no carry
    n_bins = (b1 + 1) * stride
    bases = _bases(problems)
    bin_costs = [max(budget - base, 1e-12) / nb for budget, base, nb in zip(budgets, bases, bins, strict=True)]

    def flat(costs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        k = [np.ceil((c - c.min()) / bc) for c, bc in zip(costs, bin_costs, strict=True)]
        over = (k[0] > b1) | (k[1] > b2)
        return np.where(over, n_bins, k[0] * stride + k[1]).astype(np.int64), over

    factors: list[fx.Factor] = []
    for g in merged[0][0]:
        k, over = flat([m[0][g] for m in merged])
        vals = np.where(over, fx.NEG, np.asarray(problems[0].scores[g], dtype=float))
        factors.append(fx.Sparse((g,), k[:, None], vals[:, None]))
    for key in merged[0][1]:
        k, over = flat([m[1][key] for m in merged])
        factors.append(fx.Sparse(key, k[..., None], np.where(over, fx.NEG, 0.0)[..., None]))
    sizes = {g: len(u) for g, u in merged[0][0].items()}
    p0 = problems[0]
    score_base = sum(float(p0.scores[g][0]) for g, c in p0.candidates.items() if len(c) == 1)
    valid = np.arange(n_bins) % stride <= b2
    return Discretised(sizes, factors, bases[0], score_base, bin_costs[0], n_bins, valid)


def fill_budgets(problems: Sequence[SearchProblem], widths: dict[str, int], budgets: Sequence[float]) -> dict[str, int]:
    """Widen one group at a time (largest score gain first) while every target's exact cost still fits."""
    first, current = problems[0], dict(widths)
    while True:
        best = None
        for group, cands in first.candidates.items():
            i = cands.index(current[group])
            if i + 1 == len(cands):
                continue
            trial = {**current, group: cands[i + 1]}
            gain = first.scores[group][i + 1] - first.scores[group][i]
            fits = all(p.cost(trial) <= b for p, b in zip(problems, budgets, strict=True))
            if fits and gain > 0 and (best is None or gain > best[0]):
                best = (gain, trial)
        if best is None:
            return current
        current = best[1]


def solve_pair(
    problems: Sequence[SearchProblem],
    budgets: Sequence[float],
    *,
    bins: tuple[int, int] = PAIR_BINS,
    limits: SolverLimits | None = None,
    names: Sequence[str] = ("A", "B"),
) -> VectorSolution:
    """The best plan whose predicted cost meets both budgets (see the module docstring).

    Rounding every term up to whole bins is safe but wastes up to one bin per term in each budget, a lot on a
    coarse 2-D grid. So the grid is also solved with both budgets widened by ``RELAX`` of that worst-case
    waste, and each target's own 1-D plan is a candidate too; every candidate's exact predicted costs are
    checked against the true budgets, and the best one that meets both wins (the unwidened grid's plan always
    does, so the answer is never worse than the plain rounded-up solve, nor than a single-target plan that
    meets both).

    Raises:
        InfeasibleError: a budget is below its target's minimum, or no one plan meets both (names each
            target's minimum predicted latency).
        UsageError: the problems are not over the same groups and terms.
    """
    check_same_structure(problems)
    refuse_infeasible(problems, budgets, names)
    grid = discretise_pair(problems, budgets, bins)
    waste = [len(grid.factors) * (b - base) / n for b, base, n in zip(budgets, _bases(problems), bins, strict=True)]
    candidates, exact = [], True
    for relax in (0.0, *RELAX):
        widened = [b + relax * w for b, w in zip(budgets, waste, strict=True)]
        solver = FrontSolver(problems[0], widened[0], limits=limits, disc=discretise_pair(problems, widened, bins))
        if solver.feasible():
            candidates.append(solver.plan_at(solver.disc.n_bins - 1))
            exact &= solver.exact
    for problem, budget in zip(problems, budgets, strict=True):
        with contextlib.suppress(InfeasibleError):
            candidates.append(solve(problem, budget).widths)
    feasible = [fill_budgets(problems, w, budgets) for w in candidates
                if all(p.cost(w) <= b for p, b in zip(problems, budgets, strict=True))]
    if not feasible:
        lows = ", ".join(f"{n} {min_cost(p)[0]:.4g} ms" for n, p in zip(names, problems, strict=True))
        raise InfeasibleError(
            f"found no width plan meeting both budgets at once on the {bins[0]}x{bins[1]} grid (each target's "
            f"minimum alone: {lows})",
            "relax one SLA, or use more bins",
        )
    solution = vector_solution(problems, budgets, max(feasible, key=problems[0].score), exact)
    if not exact:
        solution.bound = np.nan
    return solution


def _bases(problems: Sequence[SearchProblem]) -> list[float]:
    """Each problem's cost floor: constant plus every merged term's minimum."""
    out = []
    for unary, pair, const in map(merge_terms, problems):
        out.append(const + sum(float(u.min()) for u in unary.values()) + sum(float(p.min()) for p in pair.values()))
    return out


def vector_solution(
    problems: Sequence[SearchProblem], budgets: Sequence[float], widths: dict[str, int], exact: bool,
    method: str = "itcp-2d", binding_pct: float = 2.0,
) -> VectorSolution:
    costs = [p.cost(widths) for p in problems]
    binding = [c >= b * (1 - binding_pct / 100) for c, b in zip(costs, budgets, strict=True)]
    score = problems[0].score(widths)
    return VectorSolution(widths, score, costs, list(budgets), exact, method, binding, score if exact else np.nan)


def combined(problems: Sequence[SearchProblem], budgets: Sequence[float], lam: np.ndarray) -> SearchProblem:
    """One problem whose cost is ``sum_k lam_k * cost_k / budget_k`` (budget 1)."""
    w = [float(x) / b for x, b in zip(lam, budgets, strict=True)]
    terms = [
        Term(t.in_group, t.out_group, sum(wk * p.terms[i].table for wk, p in zip(w, problems, strict=True)))
        for i, t in enumerate(problems[0].terms)
    ]
    constant = sum(wk * p.constant for wk, p in zip(w, problems, strict=True))
    return SearchProblem(problems[0].candidates, problems[0].scores, terms, constant)


def solve_lagrangian(
    problems: Sequence[SearchProblem],
    budgets: Sequence[float],
    *,
    bins: int = 1000,
    steps: int = 20,
    names: Sequence[str] | None = None,
) -> VectorSolution:
    """The best plan found over ``steps`` relaxed 1-D solves, with an upper bound (see the module docstring).

    Each relaxed solve gives a whole front (best plan at every relaxed budget); up to ``probes`` of its plans,
    from the top down, are checked against every budget, so a step whose full-budget plan overshoots one
    target still contributes its best plan that does not.

    Raises:
        InfeasibleError: a budget is below its target's minimum, or no relaxed plan met every budget.
    """
    names = names or [f"target {i + 1}" for i in range(len(problems))]
    check_same_structure(problems)
    refuse_infeasible(problems, budgets, names)
    lam = np.full(len(problems), 1.0 / len(problems))
    best: dict[str, int] | None = None
    bound = np.inf
    for _ in range(steps):
        relaxed = combined(problems, budgets, lam)
        # every factor's cost is rounded up by < one bin: a plan of relaxed cost <= 1 still fits 1 + slack
        slack = 2 * len(discretise(relaxed, 1.0, bins).factors) / bins
        solver = FrontSolver(relaxed, 1.0 + slack, bins=bins)
        if not solver.feasible():
            break
        bound = min(bound, solver.front()[-1][1])
        ratios, found = _probe_front(problems, budgets, solver)
        if found is not None and (best is None or problems[0].score(found) > problems[0].score(best)):
            best = found
        lam = lam * np.exp(4.0 * (ratios - 1.0))
        lam /= lam.sum()
    if best is None:
        raise InfeasibleError(
            f"no relaxed plan met every budget in {steps} steps ({', '.join(names)})",
            "relax an SLA, or search longer (more steps)",
        )
    solution = vector_solution(problems, budgets, best, exact=False, method="itcp-lagrangian")
    solution.bound = max(bound, solution.score)
    return solution


def _probe_front(
    problems: Sequence[SearchProblem], budgets: Sequence[float], solver: FrontSolver, probes: int = 24
) -> tuple[np.ndarray, dict[str, int] | None]:
    """Cost/budget ratios of the relaxed solver's top plan, and the best front plan meeting every budget."""
    root = solver.root
    improving = [b for b in range(len(root)) if np.isfinite(root[b]) and root[b] > np.max(root[:b], initial=-np.inf)]
    picks = improving[::-1][:: max(1, len(improving) // probes)]
    ratios = None
    for b in picks:
        widths = solver.plan_at(b)
        r = np.array([p.cost(widths) / budget for p, budget in zip(problems, budgets, strict=True)])
        ratios = r if ratios is None else ratios
        if (r <= 1 + 1e-12).all():
            return ratios, fill_budgets(problems, widths, budgets)
    return ratios, None


def solve_targets(
    problems: Sequence[SearchProblem], budgets: Sequence[float], names: Sequence[str], *, bins: int = 1000,
    pair_bins: tuple[int, int] = PAIR_BINS,
) -> VectorSolution:
    """One target: the 1-D DP; two: the exact 2-D DP; more: Lagrangian relaxation with a reported bound."""
    if len(problems) == 1:
        refuse_infeasible(problems, budgets, names)
        widths = solve(problems[0], budgets[0], bins=bins).widths
        return vector_solution(problems, budgets, widths, exact=True, method="itcp")
    if len(problems) == 2:
        return solve_pair(problems, budgets, bins=pair_bins, names=names)
    return solve_lagrangian(problems, budgets, bins=bins, names=names)
