"""The TensorRT backend wired against a FAKE ``tensorrt`` module (this is not TensorRT).

TensorRT cannot be installed on CPU CI, so this injects a stand-in module through ``sys.modules``, pretends
CUDA is available and replaces the runner's CUDA operations with CPU ones. It proves only that the backend
makes the right calls, in the right order, with the right arguments: parse, builder config (workspace, level,
timing cache), serialize, timing cache save, deserialize, tensor addresses, ``execute_async_v3``, IProfiler.
Real behaviour is covered by ``test_tensorrt_real.py`` where TensorRT and a GPU exist.
"""

from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import pytest
import torch

from itcp_deploy.engines import EngineOptions, get_backend
from itcp_deploy.errors import InputFileError

SHAPE = (1, 3, 4, 4)


def make_fake_tensorrt(calls: list, parse_ok: bool = True) -> types.ModuleType:
    """A fake ``tensorrt`` recording every call as ``(name, args)`` in ``calls``."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.0.0-fake"

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            calls.append(("Logger", severity))

    class Error:
        def __init__(self, text):
            self.text = text

        def desc(self):
            return self.text

    class OnnxParser:
        def __init__(self, network, logger):
            calls.append(("OnnxParser", network))
            self.num_errors = 0 if parse_ok else 2

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            return parse_ok

        def get_error(self, i):
            return Error(f"node {i}: unsupported operator Foo")

    class TimingCache:
        def __init__(self, blob):
            self.blob = blob

        def serialize(self):
            return b"timing-cache-v1"

    class Config:
        def __setattr__(self, name, value):
            calls.append((f"config.{name}", value))
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", (pool, size)))

        def create_timing_cache(self, blob):
            calls.append(("create_timing_cache", bytes(blob)))
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))
            self._cache = cache

        def get_timing_cache(self):
            return self._cache

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder", None))

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return "network"

        def create_builder_config(self):
            calls.append(("create_builder_config", None))
            return Config()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network", network))
            return b"PLAN"

    class Context:
        def __init__(self):
            self.addresses = {}
            self.profiler = None

        def set_tensor_address(self, name, ptr):
            calls.append(("set_tensor_address", name))
            self.addresses[name] = ptr

        def execute_async_v3(self, stream):
            calls.append(("execute_async_v3", stream))
            n = int(np.prod(SHAPE))
            src = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addresses["input"]))
            dst = np.ctypeslib.as_array((ctypes.c_float * 10).from_address(self.addresses["output"]))
            dst[:] = src.sum()  # "inference": every logit is the input sum
            if self.profiler is not None:
                self.profiler.report_layer_time("/conv1/Conv + /Relu", 0.25)
                self.profiler.report_layer_time("Reformatting CopyNode for Input Tensor 0 to /fc/Gemm", 0.05)

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["input", "output"][i]

        def get_tensor_shape(self, name):
            return SHAPE if name == "input" else (1, 10)

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def create_execution_context(self):
            calls.append(("create_execution_context", None))
            return Context()

    class Runtime:
        def __init__(self, logger):
            calls.append(("Runtime", None))

        def deserialize_cuda_engine(self, blob):
            calls.append(("deserialize_cuda_engine", bytes(blob)))
            return Engine()

    class IProfiler:
        def __init__(self):
            pass

    trt.Logger, trt.OnnxParser, trt.Builder, trt.Runtime, trt.IProfiler = (
        Logger,
        OnnxParser,
        Builder,
        Runtime,
        IProfiler,
    )
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.LayerInformationFormat = types.SimpleNamespace(JSON="JSON")
    trt.nptype = np.dtype
    return trt


class CpuOps:
    """CPU stand-in for the runner's CUDA operations."""

    device = "cpu"

    def stream_handle(self) -> int:
        return 1234

    def synchronize(self) -> None:
        pass


@pytest.fixture
def fake(monkeypatch, tmp_path):
    from itcp_deploy.engines.tensorrt import runner as trt_runner

    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt(calls))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(trt_runner, "CUDA", CpuOps())
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx bytes (never read by the fake)")
    return calls, onnx_path


def names(calls):
    return [c[0] for c in calls]


def test_build_parses_configures_and_saves_timing_cache(fake, tmp_path):
    calls, onnx_path = fake
    backend = get_backend("tensorrt")
    assert backend.version() == "11.0.0-fake"
    options = EngineOptions(workspace_mb=256, opt_level=5, timing_cache=str(tmp_path / "engines" / "trt.cache"))
    artifact = backend.builder(onnx_path, tmp_path / "art", options)()
    assert (artifact / "engine.plan").read_bytes() == b"PLAN"
    order = names(calls)
    assert order.index("Builder") < order.index("create_network") < order.index("parse_from_file")
    assert (
        order.index("parse_from_file") < order.index("create_builder_config") < order.index("build_serialized_network")
    )
    assert ("create_network", 1 << 1) in calls  # STRONGLY_TYPED
    assert ("parse_from_file", str(onnx_path)) in calls
    assert ("set_memory_pool_limit", ("WORKSPACE", 256 << 20)) in calls
    assert ("config.builder_optimization_level", 5) in calls
    assert ("create_timing_cache", b"") in calls  # no cache yet
    assert (tmp_path / "engines" / "trt.cache").read_bytes() == b"timing-cache-v1"
    calls.clear()
    backend.builder(onnx_path, tmp_path / "art2", options)()
    assert ("create_timing_cache", b"timing-cache-v1") in calls  # the saved cache is loaded


def test_parse_failure_is_one_line(monkeypatch, fake, tmp_path):
    calls, onnx_path = fake
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt(calls, parse_ok=False))
    with pytest.raises(InputFileError) as info:
        get_backend("tensorrt").builder(onnx_path, tmp_path / "art", EngineOptions())()
    assert "unsupported operator Foo (+1 more)" in str(info.value) and "\n" not in str(info.value)
    assert "build_serialized_network" not in names(calls)


def test_runner_binds_addresses_executes_and_profiles(fake, tmp_path):
    calls, onnx_path = fake
    backend = get_backend("tensorrt")
    options = EngineOptions(cuda_graphs=False, timing_cache=str(tmp_path / "trt.cache"))
    artifact = backend.builder(onnx_path, tmp_path / "art", options)()
    calls.clear()
    x = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    with backend.runner(artifact, options) as runner:
        assert runner.clock == "cuda"
        assert runner.input_specs() == {"input": (SHAPE, np.dtype(np.float32))}
        out = runner.infer({"input": x})
        np.testing.assert_allclose(out["output"], np.full((1, 10), x.sum()))
        runner.prepare({"input": x})()
        layers = runner.layer_times_ms({"input": x}, runs=4, warmup=1)
    order = [n for n in names(calls) if n != "Logger"]
    assert order[:3] == ["Runtime", "deserialize_cuda_engine", "create_execution_context"]
    assert ("deserialize_cuda_engine", b"PLAN") in calls
    assert order.index("set_tensor_address") < order.index("execute_async_v3")
    assert ("execute_async_v3", 1234) in calls
    assert layers == pytest.approx(
        {"/conv1/Conv + /Relu": 0.25, "Reformatting CopyNode for Input Tensor 0 to /fc/Gemm": 0.05}
    )


def test_layer_names_map_to_onnx_nodes(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="/conv1/Conv"),
        helper.make_node("Relu", ["c"], ["r"], name="/Relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="/layer1/conv1/Conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), path)
    mapping = get_backend("tensorrt").layer_nodes(
        [
            "/conv1/Conv + /Relu",
            "/layer1/conv1/Conv",
            "Reformatting CopyNode for Input Tensor 0 to /conv1/Conv",
            "/Relu",
        ],
        tmp_path,
        path,
    )
    assert mapping == {
        "/conv1/Conv + /Relu": "/conv1/Conv",
        "/layer1/conv1/Conv": "/layer1/conv1/Conv",
        "Reformatting CopyNode for Input Tensor 0 to /conv1/Conv": "/conv1/Conv",
        "/Relu": None,
    }


@pytest.mark.parametrize("command", ["run", "profile-engines"])
def test_workspace_and_device_reach_the_engine_options(command, tmp_path, monkeypatch):
    """Issue 25: a failed TensorRT build names --workspace-mb; both commands that build engines take it (and
    --device), and it reaches the engine options the builder reads (the fake build above shows the builder
    passes it on to TensorRT)."""
    import itcp_deploy.cli.output as output
    from tests.conftest import run_cli

    seen = []
    monkeypatch.setattr(output, "deliver", lambda config, json_out: seen.append(config))
    code, _, err = run_cli(command, "cifar_resnet20", "--data", "synthetic", "-o", str(tmp_path / "o"),
                           "--input-shape", "1x3x32x32", "--speedup", "2", "--workspace-mb", "4096",
                           "--device", "cuda", "--backend", "tensorrt", "--precision", "fp16")
    assert code == 0, err
    options = seen[0].targets[0].engine.options
    assert (options.workspace_mb, options.device) == (4096, "cuda")
