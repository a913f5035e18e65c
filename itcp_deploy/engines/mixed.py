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
compute exactly as in the FP32 graph (:func:`keep_float_inputs`, :func:`unshare_initializers`).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path

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


def group_layers(space: PruningSpace, groups: Collection[str],
                 widths: Mapping[str, int] | None = None) -> tuple[str, ...]:
    """The layers at INT8 when ``groups`` are: those whose output group is one of them, sorted. Given the plan's
    ``widths``, none of a removed residual branch: a layer reading or writing a group at width 0 is gone from
    the network (:mod:`itcp_deploy.pruning.removal`), e.g. a removed block's second conv, which writes the
    stage's group.

    Raises:
        UsageError: a group is fixed (the network's ends stay FP32) or not in ``space``.
    """
    bad = sorted(set(groups) - {g.name for g in space.prunable})
    if bad:
        raise UsageError(f"groups {bad} cannot be INT8 (fixed or not in {space.model})",
                         "choose INT8 groups among the prunable groups (`itcp-deploy groups MODEL`)")
    gone = {g for g, w in (widths or {}).items() if int(w) == 0}
    return tuple(sorted(layer.name for layer in space.layers
                        if layer.out_group in groups and not {layer.in_group, layer.out_group} & gone))


def keep_float_inputs(quantized, quantized_nodes: Collection[str]) -> None:
    """Rewire every node outside ``quantized_nodes`` (and not itself a Q/DQ node) that reads a float
    activation (one no quantized node produced) through a QuantizeLinear -> DequantizeLinear pair back to the
    float tensor, and drop pairs left unused."""
    producer = {o: n for n in quantized.graph.node for o in n.output}
    weights = {t.name for t in quantized.graph.initializer}

    def float_source(name: str) -> str | None:
        dq = producer.get(name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in weights:
            return None
        source = producer.get(q.input[0])
        return None if source is not None and source.name in quantized_nodes else q.input[0]

    for node in quantized.graph.node:
        if node.name in quantized_nodes or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, name in enumerate(node.input):
            if (source := float_source(name)) is not None:
                node.input[k] = source
    _drop_unused(quantized)


def unshare_initializers(path: Path, nodes: Collection[str]) -> None:
    """Give each node of ``nodes`` its own copy of every initializer it shares with a node outside them (the
    exporter shares equal biases), so quantizing it leaves the other node's float weights as they were."""
    import onnx

    model = onnx.load(os.fspath(path))
    inits = {t.name: t for t in model.graph.initializer}
    outside = {i for n in model.graph.node if n.name not in nodes for i in n.input}
    for node in (n for n in model.graph.node if n.name in nodes):
        for k, name in enumerate(node.input):
            if name in inits and name in outside:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = node.input[k] = f"{name}/{node.name}"
                model.graph.initializer.append(copy)
    onnx.save(model, os.fspath(path))


def _drop_unused(model) -> None:
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            model.graph.node.remove(n)
