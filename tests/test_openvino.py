"""The OpenVINO backend on the real runtime: build, run, per-layer counters, profiling, the gate, `run`."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'itcp-deploy[openvino]')")

from itcp_deploy.engines import EngineOptions, get_backend  # noqa: E402
from itcp_deploy.engines.build import EngineSpec, build_engine  # noqa: E402
from itcp_deploy.engines.export import export_onnx, onnx_node_to_module  # noqa: E402
from itcp_deploy.errors import MissingDependencyError, UsageError  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.test_gate import _net  # noqa: E402
from tests.test_profiler import INPUT_SHAPE, Tiny, fast_config, tiny_setup  # noqa: E402


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    torch.manual_seed(0)
    model = Tiny().eval()
    tmp = tmp_path_factory.mktemp("ov")
    onnx_path = export_onnx(model, INPUT_SHAPE, tmp / "export.onnx")
    artifact = get_backend("openvino").builder(onnx_path, tmp, EngineOptions())()
    return model, onnx_path, artifact


@pytest.mark.parametrize("hint", ["latency", "throughput"])
def test_blob_runs_with_the_engine_spec_threads_hint_and_fp32(tiny_artifact, hint):
    """The blob does not carry run-time properties: they are applied on load, fp32 pinned (no silent bf16)."""
    import openvino as ov

    _, _, artifact = tiny_artifact
    assert (artifact / "model.blob").is_file()
    options = EngineOptions(threads=2, perf_hint=hint)
    with get_backend("openvino").runner(artifact, options) as runner:
        compiled = runner._compiled
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 2
        assert compiled.get_property("PERFORMANCE_HINT").upper() == hint.upper()
        assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32


def test_unknown_hint_is_a_usage_error(tiny_artifact):
    with pytest.raises(UsageError, match="performance hint"):
        get_backend("openvino").runner(tiny_artifact[2], EngineOptions(perf_hint="fastest")).__enter__()


def test_counters_attribute_every_conv_and_linear(tiny_artifact):
    model, onnx_path, artifact = tiny_artifact
    backend = get_backend("openvino")
    with backend.runner(artifact, EngineOptions()) as runner:
        raw = runner.layer_times_ms(runner.random_feeds(), runs=10, warmup=2)
    assert raw and all(ms >= 0 for ms in raw.values())
    nodes = backend.layer_nodes(list(raw), artifact, onnx_path)
    node_module = onnx_node_to_module(onnx_path)
    modules = {node_module.get(n) for n in nodes.values() if n}
    assert modules == {"conv1", "conv2", "conv3", "fc"}


def test_counters_attribute_a_linear_on_a_feature_map(tmp_path):
    """OpenVINO makes ConvNeXt's MatMul + bias Add on (N, H, W, C) a FullyConnected named after the Add (the MatMul
    is not in its original names): its time is the Linear layer's, not "other"."""
    from tests.test_engines import _PixelMlp, profiled_nodes

    onnx_path = export_onnx(_PixelMlp().eval(), (1, 3, 8, 8), tmp_path / "mlp.onnx")
    _, nodes = profiled_nodes("openvino", onnx_path, tmp_path / "art")
    node_module = onnx_node_to_module(onnx_path)
    assert {node_module.get(n) for n in nodes.values() if n} == {"conv", "fc"}, nodes


def test_quiet_runs_mean_drops_preempted_runs_whole():
    from itcp_deploy.engines.layer_times import quiet_runs_mean

    runs = [{"a": 0.010, "b": 0.020}] * 6 + [{"a": 0.500, "b": 0.020}, {"a": 0.010, "b": 0.900}] * 2
    assert quiet_runs_mean(runs) == pytest.approx({"a": 0.010, "b": 0.020})
    assert quiet_runs_mean([]) == {}


@pytest.mark.slow  # a timing comparison: noise on a shared CI runner decides it, not the code (run by hand)
def test_counted_and_plain_runs_take_the_same_time(tiny_artifact):
    """Why the profiler's per-node cost is not removed for OpenVINO: counters cost nothing measurable.
    Both compiled models of one blob, measured interleaved: medians within 20-25% (generous for a loaded CI;
    a fixed per-node cost like onnxruntime's, about 4 us per node, would show on an engine this small)."""
    from itcp_deploy.engines.openvino.build import compile_file
    from itcp_deploy.profiling.timing import TimingConfig, measure_interleaved

    backend = get_backend("openvino")
    artifact = tiny_artifact[2]
    with backend.runner(artifact, EngineOptions()) as plain, backend.runner(artifact, EngineOptions()) as counted:
        counted._compiled = compile_file(artifact / "model.blob", EngineOptions(), profiling=True)
        counted._request = counted._compiled.create_infer_request()
        result = measure_interleaved([plain, counted], None, TimingConfig(warmup=20, rounds=10, runs_per_round=50))
    ratio = result.stats[1].median_ms / result.stats[0].median_ms
    assert 0.8 < ratio < 1.25


def test_profile_engines_on_openvino_in_context_and_cached(tmp_path):
    from itcp_deploy.profiling.profiler import run_profiling

    model, space = tiny_setup()
    profile, summary = run_profiling(model, space, fast_config(tmp_path, backend="openvino"))
    assert profile.backend == "openvino" and profile.layer_source == "in-context"
    assert summary.builds_new == len(profile.engines)
    for engine in profile.engines:
        assert set(engine.layer_ms) == {"conv1", "conv2", "conv3", "fc"}
        assert sum(engine.layer_ms.values()) > 0
    again = fast_config(tmp_path, backend="openvino")
    assert run_profiling(model, space, again)[1].builds_new == 0
    other_hint = replace(again, engine=EngineOptions(perf_hint="throughput"))
    assert run_profiling(model, space, other_hint)[1].builds_cached == 0  # the hint is part of the cache key


def test_missing_openvino_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'itcp-deploy\[openvino\]'"):
        get_backend("openvino").version()
    code, _, err = run_cli("profile-engines", "cifar_resnet20", "--input-shape", "1x3x32x32", "--backend",
                           "openvino", "--max-builds", "3", "--holdout", "1")
    assert code == 2 and err.strip().count("\n") == 0
    assert "pip install 'itcp-deploy[openvino]'" in err


@pytest.fixture(scope="module")
def ov_engines(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ovgate")
    spec = EngineSpec(backend="openvino")
    small = build_engine(_net(8), (1, 3, 32, 32), tmp, "small", spec)
    big = build_engine(_net(96), (1, 3, 32, 32), tmp, "big", spec)
    return small.main_file, big.main_file


def test_check_latency_on_openvino_engines(ov_engines):
    small, big = ov_engines
    assert small.name == "small.ov.blob"
    code, out, _ = run_cli("check-latency", str(small), "--backend", "openvino", "--sla-ms", "1000", "--json")
    assert code == 0 and json.loads(out)["passed"]
    code, out, _ = run_cli("check-latency", str(small), "--backend", "openvino", "--reference", str(big),
                           "--max-ratio", "1.0", "--json")
    assert code == 0 and json.loads(out)["measured"] < 1.0
    code, _, _ = run_cli("check-latency", str(big), "--backend", "openvino", "--reference", str(small),
                         "--max-ratio", "1.0", "--json")
    assert code == 1


def test_corrupt_blob_is_one_line(tmp_path):
    garbage = tmp_path / "model.ov.blob"
    garbage.write_bytes(b"not a compiled model")
    code, _, err = run_cli("check-latency", str(garbage), "--backend", "openvino", "--sla-ms", "1")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "OpenVINO cannot load" in err


def test_outputs_match_torch_on_an_onnx_file_too(tiny_artifact):
    """The runner also compiles a plain ONNX file (what `check-latency` gets when pointed at model.onnx)."""
    model, onnx_path, _ = tiny_artifact
    x = np.random.default_rng(1).standard_normal(INPUT_SHAPE).astype(np.float32)
    with get_backend("openvino").runner(onnx_path, EngineOptions()) as runner:
        out = next(iter(runner.infer({"input": x}).values()))
    with torch.no_grad():
        np.testing.assert_allclose(out, model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_run_on_openvino_backend(tmp_path):
    """`run --backend openvino`: profiled in context, pruned, built, gated against the dense OpenVINO engine."""
    from itcp_deploy.pipeline import run
    from tests.test_pipeline import _config

    # force_fit: a 10-engine test profile is too small to judge the fit (benchmarked in docs/benchmarks.md)
    config = _config(tmp_path, engine=EngineSpec(backend="openvino"), epochs=0)
    report = run(replace(config, profile=replace(config.profile, force_fit=True)))
    out = tmp_path / "out"
    data = json.loads((out / "report.json").read_text())
    assert data["backend"] == "openvino" and report.macs_final < report.macs_dense
    assert json.loads((out / "profile.json").read_text())["layer_source"] == "in-context"
    assert (out / "model.ov.blob").is_file()
    assert report.final_over_dense < 1.0
    code, out_json, _ = run_cli("check-latency", str(out / "model.ov.blob"), "--backend", "openvino",
                                "--reference", str(out / "dense.ov.blob"), "--max-ratio", "1.0", "--json")
    assert code == 0 and json.loads(out_json)["form"] == "ratio"


def test_staircase_on_openvino(tmp_path):
    from itcp_deploy.profiling.staircase import StaircaseConfig, measure_staircase
    from itcp_deploy.profiling.timing import TimingConfig

    config = StaircaseConfig(in_channels=8, hw=8, max_width=4, backend="openvino",
                             timing=TimingConfig(warmup=2, rounds=2, runs_per_round=5))
    points = measure_staircase(config)
    assert [p.width for p in points] == [1, 2, 3, 4]
    assert [p.macs for p in points] == [points[0].macs * w for w in (1, 2, 3, 4)]
    assert all(p.median_ms > 0 for p in points)
