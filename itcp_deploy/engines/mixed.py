"""Mixed precision as a graph: Q/DQ on the nodes of the INT8 layers only (issue 27).

Every node of an exported float ONNX model belongs to a Conv/Linear layer (:func:`node_layers`): a Conv or Gemm
to its own module, any other node (ReLU, residual Add, pooling, flatten) to the layer of its first input, the
network input to none. The search decides precision per channel group, for every layer whose output group it
is (:func:`group_layers`); a node runs at INT8 when its layer does. The other nodes of a group take their
tensor from its layers, a residual Add's inputs share a group, so an Add never mixes precisions, and the Q/DQ
boundary falls on the layers whose input and output groups differ in precision, where the perf model's tables
put its cost (:mod:`itcp_deploy.perfmodel.mixed`).

:func:`itcp_deploy.engines.precision.to_int8` with ``nodes`` inserts the Q/DQ pairs (``quantize_static`` with
``nodes_to_quantize``, one pair per consumer) and rewires FP32 nodes to the float tensors, so the FP32 layers
compute exactly as in the FP32 graph.
"""

from __future__ import annotations

from collections.abc import Collection

from itcp_deploy.errors import UsageError
from itcp_deploy.space import PruningSpace

#: metadata_props key of a mixed Q/DQ model: its INT8 layers, comma-separated and sorted.
META_INT8_LAYERS = "itcp_deploy.int8_layers"


def node_layers(model) -> dict[str, str]:
    """The layer (torch module name) of every node of an exported float ONNX ``ModelProto`` (see the module
    docstring); nodes fed only by the network input or constants are left out."""
    from itcp_deploy.engines.export import onnx_node_to_module

    modules = onnx_node_to_module(model)
    tensor: dict[str, str] = {}
    out: dict[str, str] = {}
    for node in model.graph.node:  # ONNX keeps nodes in topological order
        layer = modules.get(node.name) or next((tensor[t] for t in node.input if t in tensor), None)
        if layer is None:
            continue
        out[node.name] = layer
        tensor.update((t, layer) for t in node.output)
    return out


def int8_nodes(model, layers: Collection[str]) -> list[str]:
    """The nodes of ``model`` (a float ONNX ``ModelProto``) that belong to one of ``layers``.

    Raises:
        UsageError: a layer is not a Conv/Linear module of ``model``.
    """
    owners = node_layers(model)
    unknown = sorted(set(layers) - set(owners.values()))
    if unknown:
        raise UsageError(f"layers {unknown} are not Conv/Linear layers of the exported model",
                         "name INT8 layers by their module names (`itcp-deploy groups MODEL` lists them)")
    return [name for name, layer in owners.items() if layer in layers]


def group_layers(space: PruningSpace, groups: Collection[str]) -> tuple[str, ...]:
    """The layers at INT8 when ``groups`` are: those whose output group is one of them, sorted.

    Raises:
        UsageError: a group is fixed (the network's ends stay FP32) or not in ``space``.
    """
    bad = sorted(set(groups) - {g.name for g in space.prunable})
    if bad:
        raise UsageError(f"groups {bad} cannot be INT8 (fixed or not in {space.model})",
                         "choose INT8 groups among the prunable groups (`itcp-deploy groups MODEL`)")
    return tuple(sorted(layer.name for layer in space.layers if layer.out_group in groups))
