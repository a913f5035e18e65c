"""Freeing Torch-Pruning's dependency graphs: a full cycle collection that scans only what the graph's block made.

TP's graph is cyclic (nodes point at each other) and reaches the traced copy's modules and, through the autograd
nodes it keeps, the full-size tensors pruning replaced. Reference counting never frees it and Python's collector
counts objects, not bytes, so on a large model every pruned copy stayed in memory until some later collection: a
VGG profile grew by ~0.5 GB per engine and hit the zoo sweep's memory cap. So every block that traces a graph
ends with a full collection. Over the ~400,000 objects alive after torch's imports one takes 0.2-0.3 s, and a
ResNet-20 run made 20 of them (6.0 s of 64 s, docs/benchmarks.md section 23); the objects alive on entering the
block are not the graph's, so they are frozen out of the collector meanwhile (``gc.freeze``, constant time) and
the collection takes milliseconds.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_depth = 0


@contextlib.contextmanager
def graphs_freed() -> Iterator[None]:
    """Collect, on leaving, the cyclic garbage made inside the block (drop the graph inside it). Re-entrant: the
    outermost block freezes and unfreezes; cyclic garbage among older objects waits for a later collection."""
    global _depth
    outermost = _depth == 0
    if outermost:
        gc.freeze()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        gc.collect()
        if outermost:
            gc.unfreeze()
