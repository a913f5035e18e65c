"""TensorRT for real: build, run, time and profile a tiny model. Skips (with the reason) without TensorRT + GPU."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]

if importlib.util.find_spec("tensorrt") is None:
    pytest.skip("TensorRT is not installed (pip install 'itcp-deploy[tensorrt]')", allow_module_level=True)
if not torch.cuda.is_available():
    pytest.skip("TensorRT tests need a CUDA device and torch sees none", allow_module_level=True)


def test_build_run_time_and_profile(tmp_path):
    from itcp_deploy.engines import EngineOptions, get_backend
    from itcp_deploy.engines.export import export_onnx, onnx_node_to_module
    from itcp_deploy.profiling.timing import TimingConfig, measure
    from tests.test_profiler import INPUT_SHAPE, Tiny

    torch.manual_seed(0)
    model = Tiny().eval()
    onnx_path = export_onnx(model, INPUT_SHAPE, tmp_path / "tiny.onnx")
    backend = get_backend("tensorrt")
    options = EngineOptions(timing_cache=str(tmp_path / "trt.cache"))
    artifact = backend.builder(onnx_path, tmp_path / "art", options)()
    assert (tmp_path / "trt.cache").stat().st_size > 0
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    with backend.runner(artifact, options) as runner:
        out = next(iter(runner.infer({"input": x}).values()))
        with torch.no_grad():
            np.testing.assert_allclose(out, model(torch.from_numpy(x)).numpy(), rtol=1e-2, atol=1e-3)
        stats = measure(runner, {"input": x}, TimingConfig(warmup=10, rounds=3, runs_per_round=50))
        assert stats.n == 150 and stats.median_ms > 0
        layers = runner.layer_times_ms({"input": x}, runs=20, warmup=5)
        assert layers and "Layers" in runner.layer_info()
    nodes = backend.layer_nodes(list(layers), artifact, onnx_path)
    modules = {onnx_node_to_module(onnx_path).get(n) for n in nodes.values() if n}
    assert {"conv1", "conv3", "fc"} <= modules
