"""onnxruntime session profiles -> per-layer milliseconds, attributed back to the exported Conv/Gemm nodes.

onnxruntime's profile (``SessionOptions.enable_profiling``) is Chrome-trace JSON: one ``model_run`` event per
run and one ``<node>_kernel_time`` event per executed node, with durations in whole microseconds. So per-layer
times are (trimmed) means over many runs, never single runs.

The optimised graph renames what it fuses. Found empirically (onnxruntime 1.32, CPU, both torch exporters):

* a Conv fused with its Relu/Add and moved to the NCHWc layout is named ``<tensor>_nchwc``, where ``<tensor>``
  is the output of the last op fused into it *in the original graph* (``/layer1/layer1.0/Relu_output_0_nchwc``
  is ``layer1.0.conv1`` + its Relu; ``getitem_3_nchwc`` with the dynamo exporter);
* ``ReorderInput``/``ReorderOutput`` layout conversions are new nodes, charged to the Conv they feed or
  are fed by, since they exist only because of that Conv's layout (and its channel count);
* a node rewritten by a later pass gets ``_token_<n>`` appended (INT8: the QLinearConv from a Q/DQ Conv is
  ``/conv1/Conv_token_1``);
* a Gemm (or a Conv off the NCHWc path) fused with its activation is named ``fused <node>``: AlexNet's
  ``fused /classifier/classifier.1/Gemm``. Unmapped, the two FusedGemms (over half of AlexNet's latency at 224)
  were charged to the last conv as attached time, and its fit erred by 10-18%;
* a MatMul fused with its bias Add (on more than two dims: ConvNeXt's Linear layers on (N, H, W, C)) becomes a Gemm
  named ``<matmul>/MatMulAddFusion``, between two Reshapes. Unmapped, both Linear layers of every ConvNeXt block
  were charged to its depthwise conv as attached time, which the conv's (stage width x stage width) table cannot
  follow as the hidden width moves: ConvNeXt-Tiny's fit erred 22% at 224;
* nodes that keep their name (``/linear/Gemm``, ``/ReduceMean``) map directly.

Precision boundaries (a QuantizeLinear or DequantizeLinear left unfused, and the layout Transposes of the INT8
kernels next to them) are charged to the layer they feed: in a mixed-precision engine (issue 27) they exist
because that layer's precision differs from its input's, which is where the perf model's per-pair tables put
them (:mod:`itcp_deploy.perfmodel.mixed`).

What is left (pools, concatenations, channel shuffles, unfused activations and adds: ops whose cost follows the
width of the tensor they read) is charged to the layer that produced its first input, marked ``ATTACHED``
(``"+/layer1/layer1.0/conv2/Conv"``): the profile keeps it apart from the layer's own time (issue 24; before,
it was "other", a constant to the perf model, 12% of a ShuffleNet-V2's latency at 224). Nodes upstream of every
layer stay "other".
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from itcp_deploy.engines.backend import ATTACHED
from itcp_deploy.engines.layer_times import trimmed_mean

LAYER_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
_SUFFIX = "_kernel_time"
_TOKEN = re.compile(r"^(.*)_token_\d+$")
_FUSED = "fused "  # onnxruntime's name for a node fused with its activation (FusedGemm, FusedConv)
# ops fused into (or quantizing) a layer's output: walking back through them reaches the layer they belong to
_PASS_THROUGH = (
    "Relu",
    "Clip",
    "Add",
    "Sum",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Mul",
    "LeakyRelu",
    "BatchNormalization",
    "Identity",
    "QuantizeLinear",
    "DequantizeLinear",
)


def read_node_times_ms(profile_path: str | Path, warmup_runs: int = 0) -> tuple[dict[str, float], int]:
    """Per-run kernel time of each node, skipping the first ``warmup_runs`` runs.

    Each node's per-run totals are reduced by :func:`~itcp_deploy.engines.layer_times.trimmed_mean`.

    Returns:
        (node name -> trimmed-mean ms per run, number of runs kept).
    """
    events = json.loads(Path(profile_path).read_text())
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )[warmup_runs:]
    if not runs:
        return {}, 0
    starts = np.array([r[0] for r in runs])
    per_run: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(runs)))
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith(_SUFFIX) and e["ts"] >= runs[0][0]:
            per_run[e["name"][: -len(_SUFFIX)]][np.searchsorted(starts, e["ts"], side="right") - 1] += e[
                "dur"
            ]
    return {name: trimmed_mean(us) / 1000.0 for name, us in per_run.items()}, len(runs)


def attribute_nodes(optimized_path: str | Path, original_path: str | Path) -> dict[str, str | None]:
    """Map each node of the optimised graph to the original Conv/Gemm/MatMul it computes (or ``None``)."""
    import onnx

    orig = onnx.load(str(original_path), load_external_data=False).graph
    opt = onnx.load(str(optimized_path), load_external_data=False).graph
    order = {n.name: i for i, n in enumerate(orig.node)}
    producer = {out: n for n in orig.node for out in n.output}
    by_name = {n.name: n for n in orig.node}

    def trace(node) -> str | None:
        """Walk back from a fused op through element-wise ops to the latest-computed layer op."""
        seen = set()
        stack = [node]
        found = []
        while stack:
            cur = stack.pop()
            if cur.name in seen:
                continue
            seen.add(cur.name)
            if cur.op_type in LAYER_OPS:
                found.append(cur.name)
                continue
            if cur.op_type in _PASS_THROUGH:
                stack.extend(producer[i] for i in cur.input if i in producer)
        return max(found, key=order.__getitem__) if found else None

    def direct(name: str) -> str | None:
        if name in by_name:
            return trace(by_name[name])
        if name.endswith("_nchwc") and name[: -len("_nchwc")] in producer:
            return trace(producer[name[: -len("_nchwc")]])
        if name.startswith(_FUSED):
            return direct(name[len(_FUSED):])
        token = _TOKEN.match(name)
        if token:
            return direct(token.group(1))
        head, _, tail = name.rpartition("/")
        return direct(head) if tail.endswith("Fusion") and head in by_name else None

    mapping = {n.name: direct(n.name) for n in opt.node}
    opt_producer = {out: n.name for n in opt.node for out in n.output}
    opt_consumers: dict[str, list[str]] = defaultdict(list)
    for n in opt.node:
        for i in n.input:
            opt_consumers[i].append(n.name)
    for n in opt.node:
        if mapping[n.name] is None and n.op_type == "ReorderOutput":
            mapping[n.name] = next((mapping[opt_producer[i]] for i in n.input if i in opt_producer), None)
        elif mapping[n.name] is None and n.op_type == "ReorderInput":
            mapping[n.name] = next(
                (mapping[c] for o in n.output for c in opt_consumers[o] if mapping.get(c)), None
            )
    _boundaries_to_consumers(opt, mapping, opt_consumers)
    for n in opt.node:  # topological order: a producer is settled before its consumers
        if mapping[n.name] is None:
            up = next((mapping[opt_producer[i]] for i in n.input if mapping.get(opt_producer.get(i, ""))), None)
            mapping[n.name] = ATTACHED + up.removeprefix(ATTACHED) if up else None
    return mapping


_BOUNDARY = ("QuantizeLinear", "DequantizeLinear", "Transpose")


def _boundaries_to_consumers(opt, mapping: dict[str, str | None], consumers: dict[str, list[str]]) -> None:
    """Map each unmapped boundary node (:data:`_BOUNDARY`) to the one layer that its chain of boundary nodes
    feeds (none when it feeds several layers or only the graph's outputs)."""
    for n in reversed(opt.node):  # consumers first
        if mapping[n.name] is not None or n.op_type not in _BOUNDARY:
            continue
        fed = {mapping[c] for o in n.output for c in consumers[o] if mapping.get(c)}
        if len(fed) == 1:
            mapping[n.name] = fed.pop().removeprefix(ATTACHED)
