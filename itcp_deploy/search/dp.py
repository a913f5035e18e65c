"""The exact solver: maximise the sum of group scores subject to predicted cost <= budget.

Groups are variables, terms are pairwise factors, and every factor carries an array over budget bins
(best score for each exact number of bins spent). Variable elimination (min-degree order) multiplies the
factors of a group (max-plus convolution over bins) and maximises the group out; backtracking recomputes the
argmax for the chosen assignment and budget split. On chains (VGG), residual stages whose blocks' inner
groups hang off the stage group (ResNet, downsampling blocks included) and inverted residuals (MobileNetV2)
no intermediate factor spans more than three groups, so the solve is exact for the discretised budget.

Each term's cost is rounded UP to whole bins, so the plan's true predicted cost never exceeds the budget.
The root array is the whole Pareto front (best score at every budget bin) from one solve.

When an elimination would create a factor over more than ``max_scope`` groups (or more than ``max_cells``
numbers), the solver conditions on the highest-degree groups, enumerating their candidates (still exact),
up to ``max_enumeration`` combinations; beyond that it enumerates an evenly spaced subset of those groups'
candidates (always keeping the narrowest, the widest and those of the cheapest plan, so a feasible budget
stays feasible), warns, and sets ``Solution.exact = False``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from itcp_deploy.errors import InfeasibleError
from itcp_deploy.search import factors as fx
from itcp_deploy.search.problem import SearchProblem, problem_from


@dataclass(frozen=True)
class SolverLimits:
    """When to stop eliminating exactly (see the module docstring)."""

    max_scope: int = 3
    max_cells: int = 1 << 24
    max_enumeration: int = 256


@dataclass
class Solution:
    """A width plan and how good it is. ``front``: (predicted cost upper bound, best score) at every budget
    bin where the best score improves, cheapest first (monotone in both)."""

    widths: dict[str, int]
    cost: float
    score: float
    front: list[tuple[float, float]] = field(default_factory=list)
    exact: bool = True
    method: str = "itcp"


@dataclass
class Discretised:
    """Costs as whole bins: pairwise and unary costs merged per group pair, each shifted to a zero minimum."""

    sizes: dict[str, int]
    factors: list[fx.Factor]
    base: float  # constant + the shifted-out minima
    score_base: float  # scores of single-candidate groups (not variables)
    bin_cost: float
    n_bins: int
    valid: np.ndarray | None = None  # the cells of a flattened 2-D budget grid (see factors); None: all


def merge_terms(problem: SearchProblem) -> tuple[dict, dict, float]:
    sizes = {g: len(c) for g, c in problem.candidates.items()}
    unary = {g: np.zeros(n) for g, n in sizes.items()}
    pair: dict[tuple[str, str], np.ndarray] = {}
    const = float(problem.constant)
    for t in problem.terms:
        a, b, table = t.in_group, t.out_group, np.asarray(t.table, dtype=float)
        if a == b:
            unary[a] = unary[a] + np.diagonal(table)
        elif sizes[a] == 1:
            unary[b] = unary[b] + table[0]
        elif sizes[b] == 1:
            unary[a] = unary[a] + table[:, 0]
        else:
            key, tab = ((a, b), table) if a < b else ((b, a), table.T)
            pair[key] = pair.get(key, 0.0) + tab
    for g, n in sizes.items():
        if n == 1:
            const += float(unary.pop(g)[0])
    return unary, pair, const


def discretise(problem: SearchProblem, budget: float, bins: int) -> Discretised:
    unary, pair, base = merge_terms(problem)
    base += sum(float(u.min()) for u in unary.values()) + sum(float(p.min()) for p in pair.values())
    spare = budget - base
    bin_cost = max(spare, 1e-12) / bins
    n_bins = bins + 1

    def to_bins(cost: np.ndarray) -> np.ndarray:
        k = np.ceil((cost - cost.min()) / bin_cost)
        return np.minimum(k, n_bins).astype(np.int64)

    factors: list[fx.Factor] = []
    for g, u in unary.items():
        k = to_bins(u)
        vals = np.where(k >= n_bins, fx.NEG, np.asarray(problem.scores[g], dtype=float))
        factors.append(fx.Sparse((g,), k[:, None], vals[:, None]))
    for (a, b), p in pair.items():
        k = to_bins(p)
        factors.append(fx.Sparse((a, b), k[..., None], np.where(k >= n_bins, fx.NEG, 0.0)[..., None]))
    sizes = {g: len(u) for g, u in unary.items()}
    score_base = sum(float(problem.scores[g][0]) for g, c in problem.candidates.items() if len(c) == 1)
    return Discretised(sizes, factors, base, score_base, bin_cost, n_bins)


def _graph(factors: list[fx.Factor], variables: set[str]) -> dict[str, set[str]]:
    graph = {v: set() for v in variables}
    for f in factors:
        for a in f.scope:
            graph[a].update(v for v in f.scope if v != a)
    return graph


def elimination_order(
    graph: dict[str, set[str]], sizes: dict[str, int], n_bins: int, limits: SolverLimits
) -> list[str] | None:
    """Greedy min-degree order, or None when some step would exceed the limits."""
    g = {v: set(n) for v, n in graph.items()}
    order = []
    while g:
        x = min(g, key=lambda v: (len(g[v]), math.prod(sizes[u] for u in g[v]), v))
        nbrs = g.pop(x)
        if (
            len(nbrs) > limits.max_scope
            or math.prod(sizes[u] for u in nbrs | {x}) * n_bins > limits.max_cells
        ):
            return None
        for u in nbrs:
            g[u].discard(x)
            g[u].update(nbrs - {u})
        order.append(x)
    return order


class _Elimination:
    """One run of variable elimination; keeps the buckets so any budget bin can be backtracked."""

    def __init__(
        self, factors: list[fx.Factor], order: list[str], n_bins: int, valid: np.ndarray | None = None
    ) -> None:
        self.n_bins, self.valid = n_bins, valid
        self.buckets: dict[str | None, list[fx.Factor]] = {}
        pool = list(factors)
        for x in order:
            bucket = [f for f in pool if x in f.scope]
            pool = [f for f in pool if x not in f.scope]
            self.buckets[x] = bucket
            if bucket:
                pool.append(fx.max_out(fx.combine(bucket, n_bins, valid), x))
        self.buckets[None] = pool
        root = np.full(n_bins, fx.NEG)
        root[0] = 0.0
        self.root = root if not pool else fx.row(fx.combine(pool, n_bins, valid), {}, n_bins)

    def backtrack(self, target_bin: int, fixed: dict[str, int]) -> dict[str, int]:
        assign = dict(fixed)
        stack: list[tuple[str | None, int]] = [(None, target_bin)]
        while stack:
            x, b = stack.pop()
            bucket = self.buckets[x]
            best = None
            for i in [None] if x is None else range(self._size(x, bucket)):
                trial = assign if x is None else {**assign, x: i}
                rows = [fx.row(f, trial, self.n_bins) for f in bucket]
                partial = [rows[0]] if rows else []
                for r in rows[1:]:
                    partial.append(fx.conv1d(partial[-1], r, self.valid))
                value = partial[-1][b] if partial else 0.0
                if best is None or value > best[0]:
                    best = (value, i, rows, partial)
            _, i, rows, partial = best
            if x is not None:
                assign[x] = i
            for j in range(len(rows) - 1, 0, -1):
                k = int(np.argmax(partial[j - 1][b::-1] + rows[j][: b + 1]))
                if bucket[j].origin is not None:
                    stack.append((bucket[j].origin, k))
                b -= k
            if rows and bucket[0].origin is not None:
                stack.append((bucket[0].origin, b))
        return assign

    @staticmethod
    def _size(x: str, bucket: list[fx.Factor]) -> int:
        f = next(f for f in bucket if x in f.scope)
        axis = f.scope.index(x)
        return (f.table if isinstance(f, fx.Dense) else f.bins).shape[axis]


@dataclass
class _Run:
    fixed: dict[str, int]
    root: np.ndarray


class FrontSolver:
    """Solves once for a budget; :meth:`plan_at` backtracks the best plan within any bin of the front.

    ``disc``: an already discretised problem (two budgets on one grid, :mod:`itcp_deploy.search.vector`);
    ``problem`` and ``budget`` are then its first target's.
    """

    def __init__(
        self,
        problem: SearchProblem,
        budget: float,
        *,
        bins: int = 1000,
        limits: SolverLimits | None = None,
        disc: Discretised | None = None,
    ) -> None:
        self.problem, self.budget, self.limits = problem, float(budget), limits or SolverLimits()
        self.disc = disc if disc is not None else discretise(problem, self.budget, bins)
        self.exact = True
        graph = _graph(self.disc.factors, set(self.disc.sizes))
        self.cutset, self.cut_choices = self._conditioning(graph)
        self.order = elimination_order(
            {v: n - set(self.cutset) for v, n in graph.items() if v not in self.cutset},
            self.disc.sizes,
            self.disc.n_bins,
            self.limits,
        )
        self._last: tuple[dict[str, int], _Elimination] | None = None
        self.runs = [_Run(fixed, self._eliminate(fixed).root) for fixed in self._assignments()]
        self.root = np.max([r.root for r in self.runs], axis=0)
        if self.disc.base > self.budget:  # even the cheapest cell of every term is over budget
            self.root = np.full_like(self.root, fx.NEG)

    def _conditioning(self, graph: dict[str, set[str]]) -> tuple[list[str], dict[str, list[int]]]:
        cut: list[str] = []
        while True:
            rest = {v: n - set(cut) for v, n in graph.items() if v not in cut}
            if elimination_order(rest, self.disc.sizes, self.disc.n_bins, self.limits) is not None:
                break
            cut.append(max(rest, key=lambda v: (len(rest[v]), v)))
        choices = {v: list(range(self.disc.sizes[v])) for v in cut}
        if math.prod(len(c) for c in choices.values()) > self.limits.max_enumeration:
            self.exact = False
            per = max(2, int(self.limits.max_enumeration ** (1 / len(cut))))
            _, cheapest = min_cost(self.problem)
            choices = {
                v: sorted(
                    {int(round(x)) for x in np.linspace(0, len(c) - 1, per)}
                    | {self.problem.candidates[v].index(cheapest[v])}
                )
                for v, c in choices.items()
            }
            warnings.warn(
                f"search graph too dense for exact elimination; enumerating a subset of the candidates "
                f"of {cut} (approximate)",
                stacklevel=3,
            )
        return cut, choices

    def _assignments(self):
        for combo in itertools.product(*(self.cut_choices[v] for v in self.cutset)):
            yield dict(zip(self.cutset, combo, strict=True))

    def _eliminate(self, fixed: dict[str, int]) -> _Elimination:
        if self._last is not None and self._last[0] == fixed:  # backtracking the same run again
            return self._last[1]
        factors = self.disc.factors
        for v, i in fixed.items():
            factors = [fx.restrict(f, v, i) for f in factors]
        elimination = _Elimination(factors, self.order, self.disc.n_bins, self.disc.valid)
        self._last = (fixed, elimination)
        return elimination

    def cost_at(self, b: int) -> float:
        """Upper bound on the predicted cost of any plan that spends ``b`` bins."""
        return self.disc.base + b * self.disc.bin_cost

    def front(self) -> list[tuple[float, float]]:
        best, out = fx.NEG, []
        for b, v in enumerate(self.root):
            if v > best:
                best = v
                out.append((self.cost_at(b), float(v) + self.disc.score_base))
        return out

    def feasible(self) -> bool:
        return bool(np.isfinite(self.root).any())

    def plan_at(self, b: int) -> dict[str, int]:
        """The best plan spending at most ``b`` bins (the whole budget when ``b = bins``)."""
        head = self.root[: b + 1]
        if not np.isfinite(head).any():
            raise InfeasibleError("no width plan fits this many budget bins", "raise the budget")
        target = int(np.argmax(head))
        run = next(r for r in self.runs if r.root[target] == head[target])
        idx = self._eliminate(run.fixed).backtrack(target, run.fixed)
        return {g: self.problem.candidates[g][idx.get(g, 0)] for g in self.problem.candidates}

    def solution(self, b: int | None = None, method: str = "itcp") -> Solution:
        widths = self.plan_at(self.disc.n_bins - 1 if b is None else b)
        return Solution(
            widths, self.problem.cost(widths), self.problem.score(widths), self.front(), self.exact, method
        )


def min_cost(problem: SearchProblem) -> tuple[float, dict[str, int]]:
    """The minimum predicted cost over all plans (min-sum elimination, exact) and a plan reaching it."""
    unary, pair, const = merge_terms(problem)
    tables: list[tuple[tuple[str, ...], np.ndarray]] = [((g,), u) for g, u in unary.items()]
    tables += [(k, p) for k, p in pair.items()]
    order = elimination_order(
        _graph([fx.Dense(s, t) for s, t in tables], set(unary)),
        {g: len(u) for g, u in unary.items()},
        1,
        SolverLimits(max_scope=64, max_cells=1 << 62),
    )
    trace = []
    for x in order:
        bucket = [(s, t) for s, t in tables if x in s]
        tables = [(s, t) for s, t in tables if x not in s]
        scope: tuple[str, ...] = ()
        for s, _ in bucket:
            scope = fx.union(scope, s)
        total = sum(fx.align(t, s, scope) for s, t in bucket)
        trace.append((x, scope, total))
        axis = scope.index(x)
        tables.append((scope[:axis] + scope[axis + 1 :], np.min(total, axis=axis)))
    assign: dict[str, int] = {}
    for x, scope, total in reversed(trace):
        key = tuple(slice(None) if v == x else assign[v] for v in scope)
        assign[x] = int(np.argmin(total[key]))
    widths = {g: problem.candidates[g][assign.get(g, 0)] for g in problem.candidates}
    return problem.cost(widths), widths


def min_latency_ms(perf_model) -> float:
    """The minimum predicted latency of ``perf_model`` (a :class:`~itcp_deploy.perfmodel.PerfModel`) over
    all plans of its space (a mixed-precision model's: over widths and precisions): exact, by min-sum
    elimination over the groups."""
    zeros = {g.name: np.zeros(len(g.candidates)) for g in perf_model.space.prunable}
    if perf_model.precision_tables:
        from itcp_deploy.search.precision import problem_from_mixed

        return min_cost(problem_from_mixed(perf_model.space, perf_model, zeros, dict.fromkeys(zeros, 0.0)))[0]
    return min_cost(problem_from(perf_model.space, perf_model, zeros))[0]


def solve(
    problem: SearchProblem, budget: float, *, bins: int = 1000, limits: SolverLimits | None = None
) -> Solution:
    """Best-scoring plan with predicted cost <= ``budget``, and the Pareto front up to the budget.

    Raises:
        InfeasibleError: no plan fits; the message names the minimum achievable predicted cost.
    """
    solver = FrontSolver(problem, budget, bins=bins, limits=limits)
    if not solver.feasible():
        low, _ = min_cost(problem)
        raise InfeasibleError(
            f"no width plan meets the budget {budget:.4g} ms: the minimum achievable "
            f"predicted latency is {low:.4g} ms",
            f"raise the budget to at least {low:.4g} ms (or use more --bins)",
        )
    solution = solver.solution()
    widths = fill_budget(problem, solution.widths, budget)
    if widths != solution.widths:
        solution = replace(solution, widths=widths, cost=problem.cost(widths), score=problem.score(widths))
    return solution


def fill_budget(problem: SearchProblem, widths: dict[str, int], budget: float) -> dict[str, int]:
    """Spend what bin rounding left: widen one group at a time to the next candidate, taking the largest score
    gain whose exact cost still fits, until none fits.

    The DP rounds every cost up to a whole bin, so its plan can sit a few percent under the budget; this step
    uses exact costs, keeps the plan feasible and never lowers its score.
    """
    current = dict(widths)
    while True:
        best = None
        for group, cands in problem.candidates.items():
            i = cands.index(current[group])
            if i + 1 == len(cands):
                continue
            trial = {**current, group: cands[i + 1]}
            gain = problem.scores[group][i + 1] - problem.scores[group][i]
            if problem.cost(trial) <= budget and gain > 0 and (best is None or gain > best[0]):
                best = (gain, trial)
        if best is None:
            return current
        current = best[1]
