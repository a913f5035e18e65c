"""Hardening, round 2 (issue 14), cases 1-8: inputs that used to lose data or give a wrong answer.

Each test failed before its fix. docs/reliability.md maps each row of its table to a test here (H::).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.test_reliability import assert_user_error, macs_perf_model

SHAPE = "1x3x32x32"


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def resnet20():
    from itcp_deploy.models import create_model
    from itcp_deploy.pruning import build_space

    model = create_model("cifar_resnet20").eval()
    return model, build_space(model, (1, 3, 32, 32), model_spec="cifar_resnet20")


@pytest.fixture
def weights_file(tmp_path, resnet20) -> Path:
    import torch

    path = tmp_path / "w.pt"
    torch.save(resnet20[0].state_dict(), path)
    return path


@pytest.fixture
def profile_file(tmp_path) -> Path:
    from tests.synthetic_spaces import resnet_space, synthetic_profile

    path = tmp_path / "prof.json"
    synthetic_profile(resnet_space(3), seed=5).save(path)
    return path


# ------------------------------------------------------------ 1. an output that is one of the inputs
def _output_is_input_cases(tmp_path: Path, weights: Path, profile: Path, perf_model: Path) -> dict:
    link = tmp_path / "link.json"
    link.symlink_to(profile)
    search = ("search", "cifar_resnet20", "--perf-model", str(perf_model), "--criterion", "l1-fraction",
              "--sla-ms", "1.0")
    return {
        "fit -o PROFILE": (profile, ("fit", str(profile), "-o", str(profile))),
        "fit -o SYMLINK-TO-PROFILE": (profile, ("fit", str(profile), "-o", str(link))),
        "fit ./PROFILE -o ../dir/PROFILE": (profile, ("fit", str(profile), "-o",
                                                      str(tmp_path / ".." / tmp_path.name / profile.name))),
        "search -o PERF-MODEL": (perf_model, (*search, "-o", str(perf_model))),
        "search -o WEIGHTS": (weights, (*search, "--weights", str(weights), "-o", str(weights))),
        "pareto -o PERF-MODEL": (perf_model, ("pareto", "cifar_resnet20", "--perf-model", str(perf_model),
                                              "--criterion", "l1-fraction", "-o", str(perf_model))),
        "export --out WEIGHTS": (weights, ("export", "cifar_resnet20", "--input-shape", SHAPE, "--weights",
                                           str(weights), "--out", str(weights))),
    }


@pytest.mark.parametrize("case", ["fit -o PROFILE", "fit -o SYMLINK-TO-PROFILE", "fit ./PROFILE -o ../dir/PROFILE",
                                  "search -o PERF-MODEL", "search -o WEIGHTS", "pareto -o PERF-MODEL",
                                  "export --out WEIGHTS"])
def test_output_that_is_an_input_is_refused(case, tmp_path, weights_file, profile_file, resnet20):
    perf_model = tmp_path / "pm.json"
    macs_perf_model(resnet20[1], perf_model)
    victim, args = _output_is_input_cases(tmp_path, weights_file, profile_file, perf_model)[case]
    before = victim.read_bytes()
    assert_user_error(run_cli(*args), "same file as")
    assert victim.read_bytes() == before


def test_output_checks_unit(tmp_path):
    from itcp_deploy.errors import UsageError
    from itcp_deploy.paths import check_outputs

    a = tmp_path / "a.json"
    a.write_text("{}")
    hard = tmp_path / "hard.json"
    os.link(a, hard)
    check_outputs({"-o": tmp_path / "new.json"}, {"profile": a, "weights": None})  # fine
    with pytest.raises(UsageError, match="same file as the profile"):
        check_outputs({"-o": hard}, {"profile": a})  # a hard link is the same file too
    with pytest.raises(UsageError, match="is a directory"):
        check_outputs({"-o": tmp_path}, {})


# ------------------------------------------------------------ 2. resume with changed input contents
def _run_config(tmp_path: Path, weights: Path, data: str = "digits"):
    from itcp_deploy.engines.build import EngineSpec
    from itcp_deploy.pipeline.config import DeployTarget, RunConfig
    from itcp_deploy.target import LatencyTarget

    target = DeployTarget.named(EngineSpec(), (1, 3, 32, 32), LatencyTarget(sla_ms=1.0))
    return RunConfig(model="cifar_resnet20", data=data, out_dir=str(tmp_path / "run"), targets=(target,),
                     weights=str(weights))


def _state(config):
    from itcp_deploy.pipeline.run_dir import RunFolder, RunState

    return RunState(RunFolder(config.out_dir), config)


def test_resume_refuses_changed_weights_contents(tmp_path, weights_file):
    import torch

    from itcp_deploy.errors import UsageError

    config = _run_config(tmp_path, weights_file)
    Path(config.out_dir).mkdir()
    _state(config).finish("dense", {"accuracy": 1.0})
    _state(config)  # unchanged contents: resumes
    state = torch.load(weights_file, weights_only=True)
    state["linear.bias"] = state["linear.bias"] + 1.0
    torch.save(state, weights_file)
    with pytest.raises(UsageError, match="weights"):
        _state(config)


def test_resume_refuses_changed_data_file(tmp_path, weights_file):
    from itcp_deploy.errors import UsageError

    batch = tmp_path / "test_batch"
    _write_cifar_batch(batch, np.zeros((4, 3072), np.uint8), [0, 1, 0, 1])
    config = _run_config(tmp_path, weights_file, data=f"cifar10:{batch}")
    Path(config.out_dir).mkdir()
    _state(config).finish("dense", {"accuracy": 1.0})
    _write_cifar_batch(batch, np.ones((4, 3072), np.uint8), [0, 1, 0, 1])
    with pytest.raises(UsageError, match="data"):
        _state(config)


def test_comparison_fingerprint_holds_input_contents(tmp_path, weights_file, profile_file):
    from bench.comparison.config import CompareConfig
    from itcp_deploy.pipeline.config import ProfileSettings

    config = CompareConfig(model="cifar_resnet20", data="digits", out_dir=str(tmp_path / "cmp"),
                           weights=str(weights_file), profile=ProfileSettings(profile_path=str(profile_file)))
    before = config.fingerprint()
    assert config.fingerprint() == before
    profile_file.write_text(profile_file.read_text().replace('"noise_pct": 1.0', '"noise_pct": 2.0'))
    assert config.fingerprint() != before and config.fingerprint()["contents"]["profile"] != before["contents"][
        "profile"]


# ------------------------------------------------------------ 3. NaN, inf, negative numbers in model files
BAD_NUMBERS = [float("nan"), float("inf"), -1.0]


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=["nan", "inf", "negative"])
def test_perf_model_with_bad_numbers_is_refused(value, tmp_path, resnet20):
    path = tmp_path / "pm.json"
    macs_perf_model(resnet20[1], path)
    data = json.loads(path.read_text())
    data["tables"]["layer1.0.conv1"][0][0] = value
    path.write_text(json.dumps(data))
    last = assert_user_error(run_cli("search", "cifar_resnet20", "--perf-model", str(path), "--criterion",
                                     "l1-fraction", "--sla-ms", "1.0", "-o", str(tmp_path / "w.json")),
                             str(path), "layer1.0.conv1")
    assert "IndexError" not in last and not (tmp_path / "w.json").exists()


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=["nan", "inf", "negative"])
@pytest.mark.parametrize("field", ["latency.median_ms", "layer_ms"])
def test_profile_with_bad_numbers_is_refused_without_force(value, field, tmp_path, profile_file):
    data = json.loads(profile_file.read_text())
    engine = data["engines"][3]
    if field == "layer_ms":
        engine["layer_ms"][next(iter(engine["layer_ms"]))] = value
    else:
        engine["latency"]["median_ms"] = value
    profile_file.write_text(json.dumps(data))
    assert_user_error(run_cli("fit", str(profile_file), "-o", str(tmp_path / "pm.json")), str(profile_file),
                      field.split(".")[-1])
    assert not (tmp_path / "pm.json").exists()


# ------------------------------------------------------------ 4. NaN weights and export parity
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_weights_fail_export_parity(value, tmp_path, weights_file):
    import torch

    state = torch.load(weights_file, weights_only=True)
    state["linear.weight"][0, 0] = value
    torch.save(state, weights_file)
    out = tmp_path / "m.onnx"
    assert_user_error(run_cli("export", "cifar_resnet20", "--input-shape", SHAPE, "--weights", str(weights_file),
                              "--out", str(out)), "nan or inf")
    assert not out.exists()


# ------------------------------------------------------------ 5. a damaged engine in the profiling cache
TINY = ("tests.test_profiler:Tiny", "--input-shape", "1x3x16x16", "--trust-code")
FAST_PROFILE = ("--holdout", "1", "--rounds", "2", "--runs-per-round", "3", "--layer-runs", "5")


def test_truncated_engine_in_the_cache_is_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    args = ("profile-engines", *TINY, "--cache", str(cache), "--max-builds", "4", *FAST_PROFILE, "--json")
    code, out, err = run_cli(*args, "-o", str(tmp_path / "p1.json"))
    assert code == 0, err
    engines = sorted((cache / "artifacts").rglob("model.opt.onnx"))
    assert len(engines) == 4
    data = engines[1].read_bytes()
    engines[1].write_bytes(data[: len(data) // 2])
    code, out, err = run_cli(*args, "-o", str(tmp_path / "p2.json"))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["builds_damaged"] == 1 and summary["builds_new"] == 1 and summary["builds_cached"] == 3
    assert "damaged" in err and "rebuilt" in err
    import onnx

    onnx.checker.check_model(onnx.load(str(engines[1])))  # whole again (the truncated file does not parse)


# ------------------------------------------------------------ 6. --reference of another input shape
def _tiny_onnx(path: Path, batch: int, dynamic: bool = False) -> Path:
    import warnings

    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    axes = {"input": {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(batch, 3, 8, 8),), str(path), input_names=["input"],
                          output_names=["output"], dynamo=False, dynamic_axes=axes)
    return path


def test_reference_of_another_input_shape_is_refused(tmp_path):
    a, b = _tiny_onnx(tmp_path / "a.onnx", 1), _tiny_onnx(tmp_path / "b.onnx", 4)
    assert_user_error(run_cli("check-latency", str(a), "--reference", str(b), "--max-ratio", "2"),
                      "input shape", "[1, 3, 8, 8]", "[4, 3, 8, 8]")


# ------------------------------------------------------------ 7. no samples, or a single class
def _write_cifar_batch(path: Path, data, labels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"data": data, "labels": list(labels)}, f)


def _cifar_dir(root: Path, rows: int, classes: int) -> Path:
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _write_cifar_batch(root / name, np.zeros((rows, 3072), np.uint8), [i % max(classes, 1) for i in range(rows)])
    return root


def _image_folder(root: Path, classes: int) -> Path:
    from PIL import Image

    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 40, c * 40, 0)).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize("command", ["evaluate", "train"])
@pytest.mark.parametrize("case", ["empty cifar", "one-class cifar", "one-class imagefolder"])
def test_data_with_no_samples_or_one_class_is_refused(case, command, tmp_path):
    if case == "empty cifar":
        spec, words = f"cifar10:{_cifar_dir(tmp_path / 'c', 0, 10)}", ("no samples",)
    elif case == "one-class cifar":
        spec, words = f"cifar10:{_cifar_dir(tmp_path / 'c', 8, 1)}", ("1 class",)
    else:
        spec, words = f"imagefolder:{_image_folder(tmp_path / 'f', 1)}", ("1 class",)
    extra = ("--out", str(tmp_path / "run"), "--epochs", "1") if command == "train" else ()
    assert_user_error(run_cli(command, "cifar_resnet20", "--data", spec, *extra), *words)


# ------------------------------------------------------------ 8. file modes
def test_atomic_write_keeps_the_mode_and_uses_the_umask(tmp_path):
    from itcp_deploy.atomic_io import write_json

    old = tmp_path / "old.json"
    old.write_text("{}")
    os.chmod(old, 0o640)
    write_json(old, {"a": 1})
    assert (old.stat().st_mode & 0o777) == 0o640 and json.loads(old.read_text()) == {"a": 1}
    for umask, want in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        previous = os.umask(umask)
        try:
            new = tmp_path / f"new{umask:o}.json"
            write_json(new, {})
        finally:
            os.umask(previous)
        assert (new.stat().st_mode & 0o777) == want, oct(new.stat().st_mode)


def test_exported_onnx_gets_the_umask_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        code, _, err = run_cli("export", "cifar_resnet20", "--input-shape", SHAPE, "--out", str(tmp_path / "m.onnx"))
    finally:
        os.umask(previous)
    assert code == 0, err
    assert ((tmp_path / "m.onnx").stat().st_mode & 0o777) == 0o644
