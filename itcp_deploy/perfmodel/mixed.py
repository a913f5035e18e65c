"""Per-layer tables of mixed-precision engines: one width table per precision pair of a layer's groups.

A layer runs at its output group's precision and reads its input group's (:mod:`itcp_deploy.engines.mixed`);
where the two differ, the Q/DQ boundary (and on ONNX Runtime CPU the layout transposes of its INT8 kernels) is
profiled as part of the layer. So each layer's latency is a table over (input width, output width) for each
:data:`Combo` ``(input group's precision, output group's precision)``, and the perf model stays additive over
layers with the same pairwise structure as the width-only model; the DP over (width, precision) states
(:mod:`itcp_deploy.search.precision`) is exact on it.

Each pair's tables are fitted like the single-precision ones (:func:`~itcp_deploy.perfmodel.tables.layer_tables`)
on the samples measured at that pair: an engine contributes a layer's time to the pair that layer ran at in it.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import replace

import numpy as np

from itcp_deploy.errors import UsageError
from itcp_deploy.perfmodel.tables import layer_class, layer_tables
from itcp_deploy.profiling.records import ATTACHED_SUFFIX, EngineMeasurement
from itcp_deploy.space import PruningSpace

FP32, INT8 = "fp32", "int8"
MIXED = (FP32, INT8)
Combo = tuple[str, str]  # (precision of a layer's input group, of its output group)
COMBOS: tuple[Combo, ...] = tuple(itertools.product(MIXED, MIXED))
SAME: Combo = (FP32, FP32)


def combo_key(combo: Combo) -> str:
    """``fp32>int8``: a pair as a JSON key."""
    return ">".join(combo)


def group_precisions(space: PruningSpace, int8_groups: Collection[str]) -> dict[str, str]:
    """Every group's precision in an engine whose ``int8_groups`` are quantized.

    Raises:
        UsageError: a name is not a prunable group of ``space`` (fixed groups stay fp32).
    """
    prunable = {g.name for g in space.prunable}
    bad = sorted(set(int8_groups) - prunable)
    if bad:
        raise UsageError(f"groups {bad} cannot be INT8 in {space.model} (fixed or unknown)",
                         "choose INT8 groups among the prunable groups (`itcp-deploy groups MODEL`)")
    return {g.name: INT8 if g.name in int8_groups else FP32 for g in space.groups}


def layer_combos(space: PruningSpace, int8_groups: Collection[str]) -> dict[str, Combo]:
    """Each layer's precision pair in an engine whose ``int8_groups`` are quantized."""
    p = group_precisions(space, int8_groups)
    return {layer.name: (p[layer.in_group], p[layer.out_group]) for layer in space.layers}


def at_combo(space: PruningSpace, engines: Sequence[EngineMeasurement], combo: Combo) -> list[EngineMeasurement]:
    """The engines with only the per-layer times of the layers that ran at ``combo`` in them."""
    out = []
    for e in engines:
        combos = layer_combos(space, e.int8_groups)
        keep = {k: v for k, v in e.layer_ms.items() if combos.get(k.removesuffix(ATTACHED_SUFFIX)) == combo}
        if keep:
            out.append(replace(e, layer_ms=keep))
    return out


def combo_tables(space: PruningSpace, engines: Sequence[EngineMeasurement]) -> dict[str, dict[Combo, np.ndarray]]:
    """Uncalibrated per-layer tables (ms) for every precision pair the layer can run at (a layer reading a
    fixed group only at an fp32 input, one writing a fixed group only at an fp32 output).

    Raises:
        UsageError: a pair some layer can run at was never measured, on it or on any layer of its class (same
            kind, kernel and shape: its table is the class's, uncorrected; ResNet-56 at 4x was refused when one
            of its nine alike layer3 convs had no engine at int8>int8).
    """
    tables: dict[str, dict[Combo, np.ndarray]] = {layer.name: {} for layer in space.layers}
    fixed = {g.name for g in space.groups if g.fixed}
    for combo in COMBOS:
        layers = [la for la in space.layers if _possible(la.in_group, la.out_group, combo, fixed)]
        if not layers:
            continue
        measured = at_combo(space, engines, combo)
        seen = {layer_class(la) for la in space.layers for e in measured if la.name in e.layer_ms}
        missing = [la.name for la in layers if layer_class(la) not in seen]  # a class shares its kernel's table
        if missing:
            raise UsageError(f"no engine measured layer {missing[0]} at precisions {combo_key(combo)}",
                             "profile more mixed-precision engines (--max-builds)")
        fitted = layer_tables(space, measured)
        for layer in layers:
            tables[layer.name][combo] = fitted[layer.name]
    return tables


def _possible(in_group: str, out_group: str, combo: Combo, fixed: set[str]) -> bool:
    if in_group == out_group and combo[0] != combo[1]:  # a depthwise layer reads and writes one group
        return False
    return (combo[0] == FP32 or in_group not in fixed) and (combo[1] == FP32 or out_group not in fixed)
