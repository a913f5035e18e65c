"""INT8 (Q/DQ, per-channel weights, static calibration) runs end to end on onnxruntime CPU and agrees with FP32.

Tolerance: a trained CNN quantized with per-channel int8 weights and calibrated uint8 activations typically
flips the top-1 class on well under 5% of inputs, and its logits move by a few percent of their norm
(8-bit steps over ~4 layers); measured here: 99% agreement, 1.3% median error. We require top-1 agreement
>= 95% and a median relative logits error <= 5%: slack for a tiny model trained for seconds, tight enough that a
wrong scale, a missing calibration or a broken Q/DQ graph (near-random classes, errors near 100%) fails.

The settings follow the CPU (``engines.int8``): on an AVX2-only EPYC without VNNI, full-range u8s8 saturated
and agreed on 87% only (issue 17), so such CPUs get ``reduce_range``. The test runs with this CPU's settings and
with the no-VNNI ones (on every CPU, so a VNNI machine checks what an AVX2 machine will run). Measured here
(AVX-512 VNNI, first 200 test images): u8s8 98.5%, u8s8-reduce-range 97.5%, u8u8 98.0%.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from itcp_deploy.engines import EngineOptions, get_backend
from itcp_deploy.engines.int8 import META_SETTINGS, ORT_FULL_RANGE, ORT_REDUCE_RANGE, engine_int8_settings
from itcp_deploy.engines.precision import convert_precision
from itcp_deploy.errors import UsageError
from tests.conftest import run_cli


def digit_net() -> torch.nn.Sequential:
    """Three strided conv-BN-ReLU blocks and a classifier: ~93% on ``digits`` after 4 epochs (2 s)."""
    nn = torch.nn
    layers = []
    for c_in, c_out in ((3, 16), (16, 32), (32, 32)):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def trained_digit_net() -> torch.nn.Sequential:
    """:func:`digit_net` trained for 4 epochs on ``digits`` (32x32), seeded (``bench/int8_agreement.py`` too)."""
    from itcp_deploy.data import load_dataset

    info = load_dataset("digits", "train", augment=False)
    xs = torch.stack([info.dataset[i][0] for i in range(len(info.dataset))])
    ys = torch.tensor([info.dataset[i][1] for i in range(len(info.dataset))])
    torch.manual_seed(0)
    model = digit_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):
        for idx in torch.randperm(len(xs)).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_digit_net(), tmp_path_factory.mktemp("int8")


def test_calibrate_cli_writes_seeded_set_and_manifest(tmp_path):
    args = ("calibrate", "--data", "synthetic", "--num", "32", "--out-dir", str(tmp_path), "--json")
    code, out, err = run_cli(*args, "--seed", "1", "--name", "a")
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["num"] == 32 and manifest["seed"] == 1 and manifest["source"] == "synthetic"
    assert manifest["preprocessing"]["augment"] is False and len(manifest["preprocessing"]["mean"]) == 3
    data = np.load(tmp_path / "a.npz")
    assert data["inputs"].shape == (32, 3, 32, 32) and list(data["indices"]) == manifest["indices"]
    run_cli(*args, "--seed", "1", "--name", "b")
    run_cli(*args, "--seed", "2", "--name", "c")
    assert np.array_equal(np.load(tmp_path / "b.npz")["inputs"], data["inputs"])
    assert json.loads((tmp_path / "c.json").read_text())["indices"] != manifest["indices"]
    code, _, err = run_cli(*args, "--input-shape", "1x3x64x64", "--name", "d")
    assert code == 2 and "--input-shape" in err and err.strip().count("\n") == 0


def _meta(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


@pytest.mark.parametrize("which", ["this-cpu", "no-vnni"])
def test_int8_agrees_with_fp32(trained, which):
    from itcp_deploy.data import load_dataset
    from itcp_deploy.data.calibration import calibrate, load_calibration
    from itcp_deploy.engines.export import export_onnx
    from itcp_deploy.engines.onnxruntime.build import OPTIMIZED

    model, tmp = trained
    fp32 = export_onnx(model, (1, 3, 32, 32), tmp / "fp32.onnx")
    calib = load_calibration(calibrate("digits", num=128, seed=0, name="digits", out_dir=tmp), (1, 3, 32, 32))
    settings = engine_int8_settings("onnxruntime", "int8") if which == "this-cpu" else ORT_REDUCE_RANGE
    int8 = convert_precision(fp32, tmp / f"{which}.onnx", "int8", calib, int8=None if which == "this-cpu" else settings)
    assert _meta(int8)[META_SETTINGS] == settings.label  # the default is this CPU's choice, recorded
    backend, options = get_backend("onnxruntime"), EngineOptions()
    test = load_dataset("digits", "test", augment=False).dataset
    xs = np.stack([test[i][0].numpy() for i in range(200)])
    with (
        backend.runner(backend.builder(fp32, tmp / "a32", options)(), options) as r32,
        backend.runner(backend.builder(int8, tmp / f"a8-{which}", options)(), options) as r8,
    ):
        f = np.concatenate([r32.infer({"input": x[None]})["output"] for x in xs])
        q = np.concatenate([r8.infer({"input": x[None]})["output"] for x in xs])
    labels = np.array([test[i][1] for i in range(200)])
    assert (f.argmax(1) == labels).mean() > 0.8  # a trained model, so agreeing on classes means something
    assert (q.argmax(1) == f.argmax(1)).mean() >= 0.95
    rel = np.linalg.norm(q - f, axis=1) / np.linalg.norm(f, axis=1)
    assert np.median(rel) <= 0.05
    ops = {n.op_type for n in onnx.load(int8).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert _meta(tmp / f"a8-{which}" / OPTIMIZED)[META_SETTINGS] == settings.label  # and kept in the engine


def test_reduce_range_weights_cannot_saturate_u8s8(trained):
    """Why reduce_range fixes CPUs without VNNI: VPMADDUBSW adds two u8 x s8 products in int16. Full-range weights
    reach 127 (2 x 255 x 127 = 64,770 > 32,767: saturates); reduced ones stay within 64 (32,640: cannot)."""
    from onnx import numpy_helper

    from itcp_deploy.engines.export import export_onnx

    model, tmp = trained
    fp32 = export_onnx(model, (1, 3, 32, 32), tmp / "fp32c.onnx")
    calib = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    peaks = {}
    for settings in (ORT_FULL_RANGE, ORT_REDUCE_RANGE):
        graph = onnx.load(convert_precision(fp32, tmp / f"w-{settings.label}.onnx", "int8", calib, int8=settings)).graph
        weights = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
        peaks[settings.label] = max(int(np.abs(w.astype(int)).max()) for w in weights if w.ndim == 4)
    assert peaks["u8s8"] == 127 and 2 * 255 * peaks["u8s8"] > 32767
    assert 2 * 255 * peaks["u8s8-reduce-range"] <= 32767


def test_int8_without_calibration_is_a_usage_error(trained):
    from itcp_deploy.engines.export import export_onnx

    model, tmp = trained
    fp32 = export_onnx(model, (1, 3, 32, 32), tmp / "fp32b.onnx")
    with pytest.raises(UsageError, match="calibration"):
        convert_precision(fp32, tmp / "x.onnx", "int8")


def test_int8_profile_attributes_layers(trained, tmp_path):
    from itcp_deploy.data.calibration import calibrate
    from itcp_deploy.profiling.design import DesignConfig
    from itcp_deploy.profiling.profiler import run_profiling
    from itcp_deploy.pruning import build_space
    from tests.test_profiler import fast_config

    model, _ = trained
    space = build_space(model, (1, 3, 32, 32), model_spec="digit_net")
    npz = calibrate("digits", num=32, seed=0, name="d32", out_dir=tmp_path)
    config = fast_config(
        tmp_path / "eng", precision="int8", calib=str(npz), design=DesignConfig(max_builds=3, holdout=1, tries=2)
    )
    profile, summary = run_profiling(model, space, config)
    assert profile.precision == "int8" and summary.builds_new == 3
    assert profile.quantization == engine_int8_settings("onnxruntime", "int8").label
    for e in profile.engines:
        assert {k.removesuffix("+") for k in e.layer_ms} == {layer.name for layer in space.layers}  # "+": attached


def test_calibration_from_a_runs_own_batches(tmp_path):
    """`run --precision int8` without --calib draws its set from the run's data (issue 25): seeded, recorded."""
    from itcp_deploy.data.calibration import calibration_from_batches, load_calibration

    batches = [(torch.randn(8, 3, 4, 4), torch.zeros(8)) for _ in range(3)]
    a = calibration_from_batches(batches, tmp_path / "a.npz", num=10, seed=1, source="digits")
    b = calibration_from_batches(batches, tmp_path / "b.npz", num=10, seed=1, source="digits")
    c = calibration_from_batches(batches, tmp_path / "c.npz", num=10, seed=2, source="digits")
    inputs = load_calibration(str(a), (1, 3, 4, 4))
    assert inputs.shape == (10, 3, 4, 4)
    np.testing.assert_array_equal(inputs, load_calibration(str(b)))
    assert not np.array_equal(inputs, load_calibration(str(c)))
    manifest = json.loads(a.with_suffix(".json").read_text())
    assert manifest["source"] == "digits" and manifest["seed"] == 1 and manifest["num"] == 10
    everything = torch.cat([x for x, _ in batches]).numpy()
    assert all(any(np.array_equal(row, e) for e in everything) for row in inputs)
