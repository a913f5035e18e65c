"""Budget-valued factors for the DP and their max-plus algebra.

A factor over a scope of groups holds, for every assignment of candidate indices, the best score for each
*exact* number of budget bins spent (``-inf``: infeasible). Two storage forms:

* :class:`Sparse`: ``m`` (bin, value) pairs per assignment. A layer term has one pair per assignment (its
  cost is fixed once both widths are), so most factors stay tiny.
* :class:`Dense`: a full array over bins ``0..B`` per assignment.

Combining factors is max-plus convolution over bins; it is done as "dense shifted by each sparse entry",
``O(m * cells * B)``, so a term over one assignment costs one shifted copy, not a ``B x B`` product.

Two budgets at once (:mod:`itcp_deploy.search.vector`) use the same 1-D bin axis as a flattened 2-D grid:
bin ``b1 * stride + b2`` spends ``b1`` bins of the first budget and ``b2`` of the second, with
``stride > 2 * B2`` so adding two valid cells never carries into ``b1``. ``valid`` (a boolean array over the
bins, ``b2 <= B2``) marks the cells that exist; every product masks the others to ``-inf``, which keeps the
max-plus algebra exact on the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEG = -np.inf
SPARSE_MAX = 64  # densify a sparse product with more entries per assignment than this
CONV_CELLS = 1 << 22  # cells one gather of :func:`conv` may produce (32 MB of float64)


@dataclass
class Sparse:
    scope: tuple[str, ...]
    bins: np.ndarray  # int, shape sizes(scope) + (m,); B + 1 marks "over budget"
    vals: np.ndarray  # float, same shape; -inf where infeasible
    origin: str | None = None  # the variable whose elimination produced this message

    @property
    def m(self) -> int:
        return self.bins.shape[-1]


@dataclass
class Dense:
    scope: tuple[str, ...]
    table: np.ndarray  # shape sizes(scope) + (B + 1,)
    origin: str | None = None


Factor = Sparse | Dense


def union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return a + tuple(v for v in b if v not in a)


def align(arr: np.ndarray, scope: tuple[str, ...], target: tuple[str, ...]) -> np.ndarray:
    """View ``arr`` (scope axes, then trailing axes) with axes in ``target`` order, size 1 where absent."""
    k = len(scope)
    perm = sorted(range(k), key=lambda i: target.index(scope[i]))
    arr = np.transpose(arr, perm + list(range(k, arr.ndim)))
    sizes = iter(arr.shape[:k])
    shape = [next(sizes) if v in scope else 1 for v in target]
    return arr.reshape(shape + list(arr.shape[k:]))


def restrict(f: Factor, var: str, index: int) -> Factor:
    """The factor with ``var`` fixed to candidate ``index`` (used when conditioning on a variable)."""
    if var not in f.scope:
        return f
    axis = f.scope.index(var)
    scope = f.scope[:axis] + f.scope[axis + 1 :]
    if isinstance(f, Dense):
        return Dense(scope, np.take(f.table, index, axis=axis), f.origin)
    return Sparse(scope, np.take(f.bins, index, axis=axis), np.take(f.vals, index, axis=axis), f.origin)


def sparse_product(a: Sparse, b: Sparse, n_bins: int, valid: np.ndarray | None = None) -> Sparse:
    scope = union(a.scope, b.scope)
    ab, av = align(a.bins, a.scope, scope), align(a.vals, a.scope, scope)
    bb, bv = align(b.bins, b.scope, scope), align(b.vals, b.scope, scope)
    bins = ab[..., :, None] + bb[..., None, :]
    vals = av[..., :, None] + bv[..., None, :]
    shape = np.broadcast_shapes(bins.shape, vals.shape)
    bins = np.broadcast_to(bins, shape).reshape(shape[:-2] + (-1,))
    vals = np.broadcast_to(vals, shape).reshape(shape[:-2] + (-1,))
    over = bins >= n_bins
    if valid is not None:
        over |= ~valid[np.minimum(bins, n_bins - 1)]
    return Sparse(scope, np.where(over, n_bins, bins), np.where(over, NEG, vals))


def densify(f: Sparse, n_bins: int) -> Dense:
    out = np.full(f.bins.shape[:-1] + (n_bins + 1,), NEG)
    cells = np.arange(int(np.prod(f.bins.shape[:-1]))).reshape(f.bins.shape[:-1] + (1,)) * (n_bins + 1)
    np.maximum.at(out.reshape(-1), (cells + f.bins).reshape(-1), f.vals.reshape(-1))  # one call, all entries
    return Dense(f.scope, out[..., :n_bins])


def to_sparse(f: Dense) -> Sparse:
    """The finite entries of a dense factor, padded to the same count per assignment."""
    idx = _first(np.isfinite(f.table))
    return Sparse(f.scope, idx, np.take_along_axis(f.table, idx, axis=-1))


def _first(keep: np.ndarray) -> np.ndarray:
    """Per assignment, the positions where ``keep`` holds, in order, then others up to the largest count."""
    m = max(int(keep.sum(axis=-1).max(initial=0)), 1)
    return np.argsort(~keep, axis=-1, kind="stable")[..., :m]


def front(s: Sparse) -> Sparse:
    """``s`` with only the entries that beat every cheaper entry of their assignment, those first.

    The DP needs the best score within each budget (the running maximum over bins), and a product's running
    maximum depends on its factors' running maxima only: an entry with more bins and no more score never
    changes a plan's score. The product then holds fewer exact-bin values; backtracking recomputes exact rows
    from the stored factors, which keep every entry. Not on two budgets' flattened grid, where a smaller bin
    index is not a smaller spend of both."""
    order = np.argsort(s.bins, axis=-1, kind="stable")
    bins, vals = np.take_along_axis(s.bins, order, axis=-1), np.take_along_axis(s.vals, order, axis=-1)
    keep = np.isfinite(vals)
    keep[..., 1:] &= vals[..., 1:] > np.maximum.accumulate(vals, axis=-1)[..., :-1]
    idx = _first(keep)
    kept = np.take_along_axis(keep, idx, axis=-1)
    return Sparse(s.scope, np.take_along_axis(bins, idx, axis=-1),
                  np.where(kept, np.take_along_axis(vals, idx, axis=-1), NEG), s.origin)


def conv(d: Dense, s: Sparse, n_bins: int, valid: np.ndarray | None = None) -> Dense:
    """Max-plus convolution over bins of a dense and a sparse factor, over the union of their scopes.

    The sparse entries are shifted in chunks (one gather per chunk, bounded by ``CONV_CELLS`` cells), not one
    at a time: a dense message times a densified message has hundreds of entries per assignment, and one numpy
    call per entry made the DP spend minutes in call overhead on deep networks (ResNet-50: 5 million calls)."""
    scope = union(d.scope, s.scope)
    s = front(s) if valid is None else s
    table = align(d.table, d.scope, scope)
    pad = np.concatenate([np.full(table.shape[:-1] + (n_bins,), NEG), table], axis=-1)[..., None, :]
    bins, vals = align(s.bins, s.scope, scope), align(s.vals, s.scope, scope)
    used = np.flatnonzero(np.isfinite(vals).reshape(-1, s.m).any(axis=0))
    shape = np.broadcast_shapes(table.shape[:-1], bins.shape[:-1])
    out = np.full(shape + (n_bins,), NEG)
    chunk = max(1, CONV_CELLS // max(1, int(np.prod(shape)) * n_bins))
    t = np.arange(n_bins)
    for start in range(0, len(used), chunk):
        cols = used[start : start + chunk]
        idx = t - bins[..., cols, None] + n_bins  # assignment x chunk x bins
        shifted = np.take_along_axis(pad, idx, axis=-1) + vals[..., cols, None]
        np.maximum(out, shifted.max(axis=-2), out=out)
    if valid is not None and len(used):
        out[..., ~valid] = NEG
    return Dense(scope, out)


def product(a: Factor, b: Factor, n_bins: int, valid: np.ndarray | None = None) -> Factor:
    if isinstance(a, Sparse) and isinstance(b, Sparse):
        if a.m * b.m <= SPARSE_MAX:
            return sparse_product(a, b, n_bins, valid)
        a = densify(a, n_bins) if a.m >= b.m else a
        b = b if isinstance(a, Dense) else densify(b, n_bins)
    if isinstance(a, Sparse):
        a, b = b, a
    if isinstance(b, Dense):  # dense x dense: iterate over the entries of the smaller one
        if b.table.size > a.table.size:
            a, b = b, a
        b = to_sparse(b)
    return conv(a, b, n_bins, valid)


def combine(factors: list[Factor], n_bins: int, valid: np.ndarray | None = None) -> Factor:
    """The product of a bucket, small scopes first, so wide arrays are shifted as few times as possible."""
    order = sorted(
        factors, key=lambda f: (len(f.scope), isinstance(f, Dense), f.m if isinstance(f, Sparse) else n_bins)
    )
    acc = order[0]
    for f in order[1:]:
        acc = product(acc, f, n_bins, valid)
    return acc


def max_out(f: Factor, var: str) -> Factor:
    """Maximise ``var`` out of a factor; the result remembers ``var`` as its origin for backtracking."""
    axis = f.scope.index(var)
    scope = f.scope[:axis] + f.scope[axis + 1 :]
    if isinstance(f, Dense):
        return Dense(scope, f.table.max(axis=axis), var)
    bins, vals = np.moveaxis(f.bins, axis, -2), np.moveaxis(f.vals, axis, -2)
    shape = bins.shape[:-2] + (-1,)
    return Sparse(scope, bins.reshape(shape), vals.reshape(shape), var)


def row(f: Factor, assignment: dict[str, int], n_bins: int) -> np.ndarray:
    """The factor's bin array (length ``n_bins``) at a full assignment of its scope."""
    key = tuple(assignment[v] for v in f.scope)
    if isinstance(f, Dense):
        return f.table[key]
    out = np.full(n_bins + 1, NEG)
    np.maximum.at(out, f.bins[key], f.vals[key])
    return out[:n_bins]


def conv1d(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Max-plus convolution of two bin arrays, truncated to their length (cells outside ``valid``: -inf)."""
    ia, ib = np.flatnonzero(np.isfinite(a)), np.flatnonzero(np.isfinite(b))
    if len(ia) > len(ib):
        a, b, ia = b, a, ib
    n = len(a)
    out = np.full(n, NEG)
    for k in ia:
        np.maximum(out[k:], a[k] + b[: n - k], out=out[k:])
    if valid is not None:
        out[~valid] = NEG
    return out
