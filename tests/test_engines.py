"""Backend registry, lazy optional imports, one-line errors, fp16 conversion, onnxruntime profile attribution."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from itcp_deploy.engines import EngineOptions, get_backend, list_backends
from itcp_deploy.engines.onnxruntime.build import SessionFromOnnx
from itcp_deploy.errors import InputFileError, MissingDependencyError, UnknownNameError
from tests.test_profiler import INPUT_SHAPE, Tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    from itcp_deploy.engines.export import export_onnx

    torch.manual_seed(0)
    return export_onnx(Tiny().eval(), INPUT_SHAPE, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_registry_lists_backends_and_suggests_names():
    assert list_backends() == ["onnxruntime", "openvino", "tensorrt", "torch"]
    with pytest.raises(UnknownNameError, match="did you mean 'onnxruntime'"):
        get_backend("onnxrt")
    backend = get_backend("onnxruntime")
    assert get_backend(backend) is backend


def test_nothing_optional_is_imported_and_help_works_without_tensorrt():
    code = (
        "import sys; sys.modules['tensorrt'] = None\n"
        "import itcp_deploy.engines, itcp_deploy.profiling.profiler, itcp_deploy.cli\n"
        "from itcp_deploy.cli import main\n"
        "for cmd in ('profile-engines', 'calibrate', 'staircase'):\n"
        "    assert main([cmd, '--help']) == 0\n"
        "assert sys.modules.get('tensorrt') is None and 'pycuda' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_tensorrt_not_installed_is_one_line(monkeypatch):
    from tests.conftest import run_cli

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'itcp-deploy\[tensorrt\]'"):
        get_backend("tensorrt").version()
    code, _, err = run_cli(
        "profile-engines",
        "cifar_resnet20",
        "--input-shape",
        "1x3x32x32",
        "--backend",
        "tensorrt",
        "--max-builds",
        "3",
        "--holdout",
        "1",
    )
    assert code == 2 and err.strip().count("\n") == 0
    assert "pip install 'itcp-deploy[tensorrt]'" in err


def test_no_cuda_stops_before_any_tensorrt_builder(monkeypatch, tiny_onnx, tmp_path):
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.0.0-fake"

    def builder(*_):
        raise AssertionError("a Builder was created without a GPU")

    fake.Builder = fake.Runtime = builder
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    backend = get_backend("tensorrt")
    with pytest.raises(MissingDependencyError, match="CUDA device"):
        backend.builder(tiny_onnx, tmp_path / "plan", EngineOptions())()


def test_unparseable_onnx_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not an onnx model" * 20)
    with pytest.raises(InputFileError) as info:
        SessionFromOnnx(bad, tmp_path / "art", EngineOptions())()
    assert "onnxruntime cannot load" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputFileError, match="does not exist"):
        SessionFromOnnx(tmp_path / "missing.onnx", tmp_path / "art", EngineOptions())()


def test_unsupported_operator_is_one_line(tmp_path):
    node = helper.make_node("NoSuchOperator", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(InputFileError) as info:
        SessionFromOnnx(path, tmp_path / "art", EngineOptions())()
    assert "NoSuchOperator" in str(info.value) and "\n" not in str(info.value)


def test_fp16_graph_keeps_float32_io(tiny_onnx, tmp_path):
    from itcp_deploy.engines.precision import convert_precision

    out = convert_precision(tiny_onnx, tmp_path / "fp16.onnx", "fp16")
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    floats = [t.data_type for t in model.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert floats and all(t == TensorProto.FLOAT16 for t in floats)
    with pytest.raises(Exception, match="unknown precision"):
        convert_precision(tiny_onnx, tmp_path / "x.onnx", "bf8")


def test_ort_profile_attributes_every_layer(tiny_onnx, tmp_path):
    from itcp_deploy.engines.backend import ATTACHED
    from itcp_deploy.engines.export import onnx_node_to_module

    backend = get_backend("onnxruntime")
    artifact = backend.builder(tiny_onnx, tmp_path / "art", EngineOptions())()
    with backend.runner(artifact, EngineOptions()) as runner:
        raw = runner.layer_times_ms(runner.random_feeds(), runs=20, warmup=2)
    nodes = backend.layer_nodes(list(raw), artifact, tiny_onnx)
    to_module = onnx_node_to_module(tiny_onnx)
    modules = {to_module.get(n) for n in nodes.values() if n and not n.startswith(ATTACHED)}
    assert modules == {"conv1", "conv2", "conv3", "fc"}
    # ops left after fusion (pools, adds) are charged to the layer whose output they read, not lost as "other"
    assert {to_module.get(n.removeprefix(ATTACHED)) for n in nodes.values() if n and n.startswith(ATTACHED)} <= modules
    fused = [name for name in raw if name.endswith("_nchwc")]
    assert not fused or all(nodes[name] for name in fused)  # NCHWc convs trace back to a Conv


def profiled_nodes(backend_name: str, onnx_path, out) -> tuple[dict, dict]:
    """Build ``onnx_path`` on the backend, profile a few runs: the node times and each node's ONNX layer."""
    backend = get_backend(backend_name)
    artifact = backend.builder(onnx_path, out, EngineOptions())()
    with backend.runner(artifact, EngineOptions()) as runner:
        raw = runner.layer_times_ms(runner.random_feeds(), runs=5, warmup=1)
    return raw, backend.layer_nodes(list(raw), artifact, onnx_path)


def test_ort_profile_maps_a_gemm_fused_with_its_activation(tmp_path):
    """onnxruntime renames a Gemm fused with its ReLU ``fused <node>`` (AlexNet's and VGG's classifiers): its
    time is the Linear layer's own, not time attached to the conv before it."""
    from itcp_deploy.engines.backend import ATTACHED
    from itcp_deploy.engines.export import export_onnx, onnx_node_to_module

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 64),
                              torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    onnx_path = export_onnx(net, (1, 3, 8, 8), tmp_path / "fc.onnx")
    raw, nodes = profiled_nodes("onnxruntime", onnx_path, tmp_path / "art")
    fused = [name for name in raw if name.startswith("fused ")]
    assert fused, f"onnxruntime no longer fuses Gemm+Relu under this name: {sorted(raw)}"
    to_module = onnx_node_to_module(onnx_path)
    assert {to_module.get(nodes[name] or "") for name in fused} == {"2"}
    assert not any((n or "").startswith(ATTACHED) for n in (nodes[name] for name in fused))


class _PixelMlp(torch.nn.Module):
    """ConvNeXt's block in miniature: a conv, then a Linear on (N, H, W, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).permute(0, 2, 3, 1))


def test_ort_profile_maps_a_matmul_fused_with_its_bias_on_a_feature_map(tmp_path):
    """onnxruntime turns a MatMul + Add on a 4-D tensor into a Gemm named ``<matmul>/MatMulAddFusion``: its time
    is the Linear layer's own (it was charged to the conv before it, and ConvNeXt-Tiny's fit erred 22%)."""
    from itcp_deploy.engines.backend import ATTACHED
    from itcp_deploy.engines.export import export_onnx, onnx_node_to_module

    onnx_path = export_onnx(_PixelMlp().eval(), (1, 3, 8, 8), tmp_path / "mlp.onnx")
    raw, nodes = profiled_nodes("onnxruntime", onnx_path, tmp_path / "art")
    fused = [name for name in raw if name.endswith("/MatMulAddFusion")]
    assert fused, f"onnxruntime no longer fuses MatMul+Add under this name: {sorted(raw)}"
    assert {onnx_node_to_module(onnx_path).get(nodes[name] or "") for name in fused} == {"fc"}
    assert not any((nodes[name] or ATTACHED).startswith(ATTACHED) for name in fused)


def test_device_name_is_specific():
    from itcp_deploy.engines.device import device_name

    name = device_name("cpu")
    assert name and "[" in name  # model string + architecture
