"""OpenVINO performance counters -> the exported ONNX Conv/Gemm nodes they compute.

Performance counters (``InferRequest.get_profiling_info``) are named after the nodes of the compiled model's
*runtime* graph (``CompiledModel.get_runtime_model``), whose ``originalLayersNames`` rt-info lists the
``ov.Model`` ops fused into each node. Found empirically (OpenVINO 2026.4, CPU, ONNX frontend, TorchScript
exporter):

* a Conv with a bias becomes ``<onnx node>/WithoutBiases`` (the bias add is folded back in); a Conv without
  bias keeps the ONNX node name; fused Relu/Add/Clip ops follow it in ``originalLayersNames``
  (``/layer1/layer1.0/conv2/Conv/WithoutBiases,/layer1/layer1.0/Add,/layer1/layer1.0/Relu_1``);
* the op producing a graph output is renamed after the output tensor (the classifier's Gemm is ``output``);
* a MatMul + bias Add on more than two dims (ConvNeXt's Linear layers on (N, H, W, C)) becomes a
  ``FullyConnected`` named after the Add, whose original names list the Add but not the MatMul (``/fc1/Add``):
  the Add of a constant to a layer's output is that layer's (it was "other", a constant to the perf model);
* ``Reorder`` nodes (layout conversions to and from OpenVINO's blocked channel layouts) have no original op;
  like onnxruntime's ``ReorderInput``/``ReorderOutput``, each is charged to the Conv it feeds, else to the one
  that feeds it, since it exists only because of that Conv's layout.

Whatever cannot be traced to a Conv/Gemm/MatMul is "other".
"""

from __future__ import annotations

from pathlib import Path

LAYER_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def onnx_owner(onnx_path: str | Path):
    """``owner(name)``: the ONNX Conv/Gemm/MatMul node an ``ov.Model`` op name comes from, or ``None``."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    layers = {n.name for n in graph.node if n.op_type in LAYER_OPS}
    tensors = {out: n.name for n in graph.node if n.op_type in LAYER_OPS for out in n.output}
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    biases: dict[str, str] = {}  # a bias Add by its name and its output (the graph output's op is named so)
    for n in graph.node:
        if n.op_type == "Add" and any(i in constants for i in n.input) and any(i in tensors for i in n.input):
            biases.update(dict.fromkeys([n.name, *n.output], next(tensors[i] for i in n.input if i in tensors)))

    def owner(name: str) -> str | None:
        if name in layers:
            return name
        if name in tensors:
            return tensors[name]
        if name in biases:
            return biases[name]
        prefixes = [layer for layer in layers if name.startswith(layer + "/")]
        return max(prefixes, key=len) if prefixes else None

    return owner


def _original_names(op) -> list[str]:
    info = op.get_rt_info()
    names = info["originalLayersNames"].astype(str) if "originalLayersNames" in info else ""
    return [op.get_friendly_name()] + [n for n in names.split(",") if n]


def attribute_layers(runtime_model, onnx_path: str | Path) -> dict[str, str | None]:
    """Map each node of a compiled model's runtime graph to the ONNX Conv/Gemm/MatMul it computes (or ``None``)."""
    owner = onnx_owner(onnx_path)
    ops = list(runtime_model.get_ordered_ops())
    mapping = {op.get_friendly_name(): next(filter(None, map(owner, _original_names(op))), None) for op in ops}
    for op in ops:
        name = op.get_friendly_name()
        if mapping[name] is not None or op.get_rt_info()["layerType"].astype(str) != "Reorder":
            continue
        consumers = [t.get_node().get_friendly_name() for out in op.outputs() for t in out.get_target_inputs()]
        producers = [v.get_node().get_friendly_name() for v in op.input_values()]
        mapping[name] = next((mapping[n] for n in consumers + producers if mapping.get(n)), None)
    return mapping
