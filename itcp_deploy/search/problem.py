"""The search problem as plain data: candidate widths and scores per group, and an additive cost.

The cost of a width plan is ``constant + sum(term.table[i_in, i_out])`` over pairwise terms, one per layer
(or per pair of groups after merging). This is exactly the shape of the performance model
(:class:`~itcp_deploy.perfmodel.model.PerfModel`), and of MACs, so the same solver serves ITCP, the
``flops`` baseline and the linearised ``knapsack-linear`` baseline.

Example (one residual stage ``s`` whose block's inner group ``b`` hangs off it)::

    SearchProblem(candidates={"s": (8, 16), "b": (4, 8, 12, 16)},
                  scores={"s": np.array([0.0, 1.0]), "b": np.array([0.0, 0.4, 0.7, 0.8])},
                  terms=[Term("s", "b", conv1_ms), Term("b", "s", conv2_ms)], constant=0.05)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from itcp_deploy.errors import UsageError
from itcp_deploy.perfmodel.flops_model import macs_tables
from itcp_deploy.space import PruningSpace


@dataclass(frozen=True)
class Term:
    """One additive cost over two groups: ``table[i, j]`` with ``i`` indexing ``in_group``'s candidates and
    ``j`` ``out_group``'s. When ``in_group == out_group`` (a depthwise layer) only the diagonal counts."""

    in_group: str
    out_group: str
    table: np.ndarray


@dataclass
class SearchProblem:
    """Maximise the sum of group scores subject to ``constant + sum of terms <= budget``."""

    candidates: dict[str, tuple[int, ...]]
    scores: dict[str, np.ndarray]
    terms: list[Term] = field(default_factory=list)
    constant: float = 0.0

    def __post_init__(self) -> None:
        for g, cands in self.candidates.items():
            s = self.scores.get(g)
            if s is None or np.shape(s) != (len(cands),):
                raise UsageError(
                    f"group {g!r} needs one score per candidate ({len(cands)}), got "
                    f"{None if s is None else np.shape(s)}",
                    "recompute the group scores",
                )
        for t in self.terms:
            want = (len(self.candidates[t.in_group]), len(self.candidates[t.out_group]))
            if t.table.shape != want:
                raise ValueError(f"term {t.in_group}->{t.out_group} table {t.table.shape} != {want}")

    def indices(self, widths: Mapping[str, int]) -> dict[str, int]:
        """Each group's candidate index; a candidate is a width, or a ``(width, precision)`` state
        (:mod:`itcp_deploy.search.precision`), given as a tuple or, read from JSON, a list."""
        try:
            return {g: c.index(_state(widths[g])) for g, c in self.candidates.items()}
        except (KeyError, ValueError) as err:
            raise UsageError(
                f"width plan does not match the candidates ({err})", "give one candidate width per group"
            ) from None

    def cost(self, widths: Mapping[str, int]) -> float:
        """Predicted cost (ms for latency problems) of a complete width plan."""
        idx = self.indices(widths)
        return float(self.constant + sum(t.table[idx[t.in_group], idx[t.out_group]] for t in self.terms))

    def score(self, widths: Mapping[str, int]) -> float:
        idx = self.indices(widths)
        return float(sum(self.scores[g][i] for g, i in idx.items()))

    def widest(self) -> dict[str, int]:
        return {g: c[-1] for g, c in self.candidates.items()}

    def narrowest(self) -> dict[str, int]:
        return {g: c[0] for g, c in self.candidates.items()}


def _state(value) -> int | tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else int(value)


def space_scores(space: PruningSpace, scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One score per candidate width of every group: ``scores``'s, 0 for a group with nothing to choose."""
    out = {}
    for g in space.groups:
        if g.fixed or len(g.candidates) == 1:
            out[g.name] = np.zeros(len(g.candidates))
        elif g.name not in scores:
            raise UsageError(f"no scores for group {g.name!r}", "score every prunable group of the space")
        else:
            out[g.name] = np.asarray(scores[g.name], dtype=float)
    return out


def problem_from_tables(
    space: PruningSpace, tables: Mapping[str, np.ndarray], constant: float, scores: Mapping[str, np.ndarray]
) -> SearchProblem:
    """A problem with one term per layer of ``space`` (``tables[layer.name]``: len C_in x len C_out)."""
    terms = [
        Term(layer.in_group, layer.out_group, np.asarray(tables[layer.name], dtype=float))
        for layer in space.layers
    ]
    return SearchProblem(
        candidates={g.name: tuple(g.candidates) for g in space.groups},
        scores=space_scores(space, scores),
        terms=terms,
        constant=float(constant),
    )


def problem_from(space: PruningSpace, perf_model, scores: Mapping[str, np.ndarray]) -> SearchProblem:
    """The ITCP problem: predicted latency (ms) from ``perf_model``'s per-layer tables."""
    tables = {layer.name: perf_model.layer_table(layer.name) for layer in space.layers}
    return problem_from_tables(space, tables, perf_model.constant_ms, scores)


def problem_from_macs(space: PruningSpace, scores: Mapping[str, np.ndarray]) -> SearchProblem:
    """The same problem with MACs in place of latency."""
    return problem_from_tables(space, macs_tables(space), 0.0, scores)
