"""The zoo sweep's memory failure class on tiny models (issue 15).

A large model (VGG, 0.5 GB a copy) failed the sweep's profile with "onnxruntime cannot load .../model.opt.onnx":
every pruned copy stayed in memory (Torch-Pruning's cyclic graph) until ONNX Runtime's loads hit the 6 GB cap
(``std::bad_alloc``, cut from the one-line error by the long path). Copies are now freed when dropped, and
running out of memory in ONNX Runtime or in the exporter says so.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from itcp_deploy.engines.export import export_onnx
from itcp_deploy.pruning import apply_widths, build_space
from tests.test_zoo_constructs import DenseNet, _min_widths


def test_a_pruned_copy_is_freed_when_dropped_not_at_some_later_collection():
    """Torch-Pruning's graph is cyclic and held each pruned copy's tensors until a collection Python runs by
    object count, not bytes: on VGG the profile grew ~0.5 GB an engine past the sweep's 6 GB cap."""
    from itcp_deploy.pruning import channel_importance

    net = DenseNet().eval()
    space = build_space(net, (1, 3, 32, 32))
    gc.collect()
    gc.disable()
    try:
        pruned = apply_widths(net, space, _min_widths(space))
        params = [weakref.ref(p) for p in pruned.parameters()]
        del pruned
        channel_importance(net, space)
        alive = sum(r() is not None for r in params)
    finally:
        gc.enable()
    assert alive == 0


_LOAD_UNDER_CAP = """
import resource, sys
from pathlib import Path
from itcp_deploy.engines.base import EngineOptions
from itcp_deploy.engines.onnxruntime.build import SessionFromOnnx
from itcp_deploy.errors import ItcpError
data_mb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmData")) // 1024
resource.setrlimit(resource.RLIMIT_DATA, ((data_mb + 40) << 20, resource.RLIM_INFINITY))
try:
    SessionFromOnnx(Path(sys.argv[1]), Path(sys.argv[2]), EngineOptions(threads=1))()
except ItcpError as err:
    print(type(err).__name__, err)
"""


def test_onnxruntime_running_out_of_memory_is_said_not_blamed_on_the_file(tmp_path):
    """The VGG failure read "onnxruntime cannot load .../model.opt.onnx: ... Load model from .../model." (the
    long path pushed bad_alloc past the cut): a load that runs out of memory now says so."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((2048, 4096), np.float32), "w")  # 32 MB, at a 40 MB margin
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2048])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "big.onnx")
    out = subprocess.run([sys.executable, "-c", _LOAD_UNDER_CAP, str(tmp_path / "big.onnx"), str(tmp_path / "art")],
                         capture_output=True, text=True, timeout=120).stdout
    assert "ran out of memory loading" in out and "\n" not in out.strip(), out


@pytest.mark.parametrize("message", ["std::bad_alloc", "Could not allocate bytes object!"])
def test_an_export_that_runs_out_of_memory_says_so(monkeypatch, tmp_path, message):
    """ViT-L's export under the sweep's cap said "replace the unsupported operation or try another --opset"
    for a std::bad_alloc (both messages are what torch raised in the sweep)."""
    from itcp_deploy.errors import ItcpError

    def out_of_memory(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(torch.onnx, "export", out_of_memory)
    with pytest.raises(ItcpError, match="ran out of memory") as info:
        export_onnx(nn.Conv2d(3, 4, 1), (1, 3, 8, 8), tmp_path / "m.onnx", verify=False)
    assert "--opset" not in str(info.value)
