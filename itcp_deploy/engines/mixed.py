"""Mixed precision as a graph: Q/DQ on the nodes of the INT8 groups only (issue 27).

Every tensor of the network has a channel group (:class:`~itcp_deploy.space.PruningSpace`): a Conv or Gemm's
output has its layer's output group; any other node's output (ReLU, residual Add, pooling, flatten) has its
first input's group; the network input has ``input``. A node runs at INT8 when its output's group does, so a
residual Add, whose inputs share a group, never mixes precisions, and the Q/DQ boundary falls on the layers
whose input and output groups differ in precision, where the perf model's tables put its cost
(:mod:`itcp_deploy.search.precision`).

``quantize_static`` with ``nodes_to_quantize`` inserts the Q/DQ pairs; one Q/DQ pair per consumer
(``DedicatedQDQPair``), and an FP32 node that would read a Q/DQ'd tensor of an FP32 group reads the float
tensor again (:func:`~itcp_deploy.engines.precision.keep_float_inputs`): the FP32 groups compute exactly as in
the FP32 graph.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import numpy as np

from itcp_deploy.engines.export import onnx_node_to_module
from itcp_deploy.engines.int8 import Int8Settings
from itcp_deploy.engines.precision import convert_precision, to_int8
from itcp_deploy.errors import UsageError
from itcp_deploy.space import INPUT_GROUP, PruningSpace

#: metadata_props key of a mixed Q/DQ model: its INT8 groups, comma-separated and sorted.
META_INT8_GROUPS = "itcp_deploy.int8_groups"


def node_groups(model, space: PruningSpace) -> dict[str, str]:
    """The channel group of every node's output in an exported float ONNX model (see the module docstring);
    nodes fed only by constants are left out."""
    layers = {layer.name: layer.out_group for layer in space.layers}
    modules = onnx_node_to_module(model)
    tensor: dict[str, str] = {i.name: INPUT_GROUP for i in model.graph.input}
    out: dict[str, str] = {}
    for node in model.graph.node:  # ONNX keeps nodes in topological order
        group = layers.get(modules.get(node.name, ""))
        if group is None:
            group = next((tensor[t] for t in node.input if t in tensor), None)
        if group is None:
            continue
        out[node.name] = group
        tensor.update((t, group) for t in node.output)
    return out


def int8_nodes(model, space: PruningSpace, groups: Collection[str]) -> list[str]:
    """The nodes of ``model`` (a float ONNX ``ModelProto``) whose output lies in one of ``groups``."""
    fixed = sorted(g.name for g in space.groups if g.fixed and g.name in groups)
    unknown = sorted(set(groups) - {g.name for g in space.groups})
    if fixed or unknown:
        raise UsageError(f"groups {fixed + unknown} cannot be INT8 (fixed or not in {space.model})",
                         "choose INT8 groups among the prunable groups (`itcp-deploy groups MODEL`)")
    return [name for name, group in node_groups(model, space).items() if group in groups]


def to_mixed(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calib: np.ndarray,
    space: PruningSpace,
    groups: Collection[str],
    settings: Int8Settings | None = None,
) -> Path:
    """``src`` with the nodes of ``groups`` at INT8 and every other node at FP32, calibrated on ``calib``
    (:func:`~itcp_deploy.engines.precision.to_int8`); the INT8 groups go into the metadata
    (:data:`META_INT8_GROUPS`). No group: a copy of ``src`` (an FP32 engine)."""
    import onnx

    if not groups:
        return convert_precision(src, dst, "fp32")
    nodes = int8_nodes(onnx.load(os.fspath(src), load_external_data=False), space, groups)
    return to_int8(src, dst, calib, settings, nodes=nodes,
                   metadata={META_INT8_GROUPS: ",".join(sorted(groups))})
