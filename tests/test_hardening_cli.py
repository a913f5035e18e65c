"""Hardening, round 2 (issue 14), cases 9-19: one-line errors where tracebacks were, right hints, early checks,
names that cannot escape their folder, SIGTERM handled like Ctrl-C.

Each test failed before its fix. docs/reliability.md maps each row of its table to a test here (HC::).
"""

from __future__ import annotations

import json
import pickle
import shutil
import signal

import pytest

from tests.conftest import run_cli
from tests.test_hardening import FAST_PROFILE, TINY, _tiny_onnx
from tests.test_interrupts import _builds, _start, _wait_for
from tests.test_reliability import assert_user_error, macs_perf_model

SHAPE = "1x3x32x32"


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


# ------------------------------------------------------------ 9. a text file as --weights
@pytest.mark.parametrize("text", ["hello world\n", "{\"state_dict\": 1}\n", "e\n", ""])
def test_text_file_as_weights(text, tmp_path):
    weights = tmp_path / "w.txt"
    weights.write_text(text)
    assert_user_error(run_cli("export", "cifar_resnet20", "--input-shape", SHAPE, "--weights", str(weights),
                              "--out", str(tmp_path / "m.onnx")), "weights file", "unreadable or corrupt")


# ------------------------------------------------------------ 10. a huge --input-shape
@pytest.mark.parametrize("command", ["export", "profile-engines", "groups"])
def test_huge_input_shape_is_bounded(command, tmp_path):
    extra = ("--out", str(tmp_path / "m.onnx")) if command == "export" else ()
    last = assert_user_error(run_cli(command, "cifar_resnet20", "--input-shape", "1x3x100000x100000", *extra),
                             "--input-shape", "at most")
    assert "GiB" in last


def test_input_shape_bound_unit():
    from itcp_deploy.cli.shapes import max_input_values, parse_input_shape
    from itcp_deploy.errors import UsageError

    assert parse_input_shape("64x3x224x224") == (64, 3, 224, 224)
    limit = max_input_values()
    assert limit >= 64 * 3 * 224 * 224
    with pytest.raises(UsageError, match="at most"):
        parse_input_shape(f"1x1x1x{limit + 1}")


# ------------------------------------------------------------ 11. an unsupported opset
@pytest.mark.parametrize("opset", ["5", "0", "-1", "99"])
def test_unsupported_opset_names_the_supported_ones(opset, tmp_path):
    out = tmp_path / "m.onnx"
    assert_user_error(run_cli("export", "cifar_resnet20", "--input-shape", SHAPE, "--out", str(out), "--opset",
                              opset), "--opset", "supported", "17")
    assert not out.exists()


# ------------------------------------------------------------ 12. ONNX with dynamic axes
def test_dynamic_axes_need_input_shape(tmp_path):
    onnx = _tiny_onnx(tmp_path / "dyn.onnx", 1, dynamic=True)
    assert_user_error(run_cli("check-latency", str(onnx), "--sla-ms", "1000"), "dynamic", "--input-shape")
    code, out, err = run_cli("check-latency", str(onnx), "--sla-ms", "1000", "--input-shape", "2x3x8x8", "--json")
    assert code == 0, err
    assert json.loads(out)["passed"] is True


def test_input_shape_that_does_not_fit_a_static_engine(tmp_path):
    onnx = _tiny_onnx(tmp_path / "static.onnx", 1)
    assert_user_error(run_cli("check-latency", str(onnx), "--sla-ms", "1000", "--input-shape", "2x3x8x8"),
                      "[1, 3, 8, 8]")


# ------------------------------------------------------------ 13. a backend that does not fit the file
def test_backend_that_does_not_fit_the_file(tmp_path):
    onnx = _tiny_onnx(tmp_path / "m.onnx", 1)
    assert_user_error(run_cli("check-latency", str(onnx), "--backend", "torch", "--sla-ms", "1"),
                      "--backend onnxruntime")
    assert_user_error(run_cli("check-latency", str(tmp_path), "--backend", "torch", "--sla-ms", "1"),
                      "holds no torch engine", "program.pt2")


# ------------------------------------------------------------ 14. a CIFAR batch whose data is a string
@pytest.mark.parametrize("data", ["a string", None, [[1, 2], [3]], {"a": 1}])
def test_cifar_batch_with_data_of_the_wrong_type(data, tmp_path):
    batch = tmp_path / "test_batch"
    with open(batch, "wb") as f:
        pickle.dump({"data": data, "labels": [0, 1]}, f)
    assert_user_error(run_cli("evaluate", "cifar_resnet20", "--data", f"cifar10:{batch}"), str(batch))


# ------------------------------------------------------------ 15. staircase with zero sizes
@pytest.mark.parametrize("option", ["--hw", "--max-width", "--in-channels"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_staircase_zero_or_negative_sizes(option, value, tmp_path):
    out = tmp_path / "s.png"
    assert_user_error(run_cli("staircase", option, value, "-o", str(out)), option)
    assert not out.exists()


# ------------------------------------------------------------ 16. check-latency on a run output folder
def test_check_latency_on_a_run_output_folder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert_user_error(run_cli("check-latency", str(run_dir), "--sla-ms", "1000"), "model.ort.onnx")
    shutil.copyfile(_tiny_onnx(tmp_path / "m.onnx", 1), run_dir / "model.ort.onnx")
    code, out, err = run_cli("check-latency", str(run_dir), "--sla-ms", "1000", "--json")
    assert code == 0, err
    assert json.loads(out)["passed"] is True


# ------------------------------------------------------------ 17. every argument checked before any work
class _WorkStarted(Exception):
    pass


def _no_work(*_args, **_kwargs):
    raise _WorkStarted


def test_demo_checks_out_before_training(tmp_path, monkeypatch):
    import itcp_deploy.data

    monkeypatch.setattr(itcp_deploy.data, "load_dataset", _no_work)
    target = tmp_path / "file"
    target.write_text("keep me")
    assert_user_error(run_cli("demo", "--out", str(target)), str(target))
    assert_user_error(run_cli("demo", "--out", str(target / "sub")), str(target))
    assert target.read_text() == "keep me"


def test_the_demo_aims_under_its_sla_by_its_margin(tmp_path, monkeypatch):
    from itcp_deploy.pipeline import demo

    seen = {}
    monkeypatch.setattr(demo, "train_dense", lambda config: tmp_path / "model.pt")
    monkeypatch.setattr(demo, "run", lambda rc, **kw: seen.setdefault("config", rc))
    demo.demo(demo.DemoConfig(out_dir=str(tmp_path / "out"), sla_fraction=0.5, margin=0.2))
    latency = seen["config"].targets[0].latency
    assert latency.resolve_ms(1.0) == 0.5 and abs(latency.target_ms(1.0) - 0.4) < 1e-12


@pytest.mark.parametrize("case", ["fit -o DIR", "fit -o FILE/x", "search -o DIR", "export --out FILE/x",
                                  "train --out FILE"])
def test_outputs_are_checked_before_any_work(case, tmp_path, monkeypatch):
    import importlib

    import itcp_deploy.data
    import itcp_deploy.models

    fit_module = importlib.import_module("itcp_deploy.perfmodel.fit")
    for module, name in ((fit_module, "fit"), (itcp_deploy.models, "create_model"),
                         (itcp_deploy.data, "load_dataset")):
        monkeypatch.setattr(module, name, _no_work)
    afile = tmp_path / "afile"
    afile.write_text("x")
    profile = tmp_path / "p.json"
    profile.write_text("{}")
    args = {
        "fit -o DIR": ("fit", str(profile), "-o", str(tmp_path)),
        "fit -o FILE/x": ("fit", str(profile), "-o", str(afile / "x")),
        "search -o DIR": ("search", "cifar_resnet20", "--perf-model", str(profile), "--sla-ms", "1",
                          "-o", str(tmp_path)),
        "export --out FILE/x": ("export", "cifar_resnet20", "--input-shape", SHAPE, "--out", str(afile / "x")),
        "train --out FILE": ("train", "cifar_resnet20", "--data", "digits", "--out", str(afile)),
    }[case]
    assert_user_error(run_cli(*args))


RUN = ("run", "cifar_resnet20", "--data", "digits", "--input-shape", SHAPE, "--sla-ms", "1")
PROFILE = ("profile-engines", "cifar_resnet20", "--input-shape", SHAPE)


@pytest.mark.parametrize("args", [(*RUN, "--method", "bogus"), (*RUN, "--criterion", "bogus"),
                                  (*RUN, "--backend", "bogus"), (*RUN, "--precision", "int9"),
                                  (*PROFILE, "--backend", "bogus"), (*PROFILE, "--precision", "int9"),
                                  (*PROFILE, "--shard", "5/2")], ids=lambda a: " ".join(a[-2:]) + f" ({a[0]})")
def test_names_are_checked_before_any_work(args, tmp_path, monkeypatch):
    import itcp_deploy.data
    import itcp_deploy.models

    monkeypatch.setattr(itcp_deploy.models, "create_model", _no_work)
    monkeypatch.setattr(itcp_deploy.data, "load_dataset", _no_work)
    extra = ("-o", str(tmp_path / "run")) if args[0] == "run" else ("--cache", str(tmp_path / "c"))
    assert_user_error(run_cli(*args, *extra), args[-1])
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()


# ------------------------------------------------------------ 18. names that escape their folder
@pytest.mark.parametrize("name", ["../../x", "../x", "/tmp/x", "a/b", ".", "..", ""])
def test_calibration_name_cannot_escape_calib(name, tmp_path):
    (tmp_path / "work").mkdir()
    import os

    os.chdir(tmp_path / "work")
    assert_user_error(run_cli("calibrate", "--data", "synthetic", "--num", "4", "--name", name), "--name")
    assert sorted(p.name for p in tmp_path.rglob("*.npz")) == []


def test_calib_name_on_build_cannot_escape_calib(tmp_path):
    from itcp_deploy.data.calibration import load_calibration
    from itcp_deploy.errors import UsageError

    (tmp_path / "secret.npz").write_bytes(b"")
    with pytest.raises(UsageError, match="--calib"):
        load_calibration("../secret", (1, 3, 32, 32), calib_dir=tmp_path / "calib")


# ------------------------------------------------------------ 19. empty --methods; SIGTERM like SIGINT
@pytest.mark.parametrize("methods", ["", ",", " , "])
def test_pareto_with_no_methods(methods, tmp_path, monkeypatch):
    from itcp_deploy.models import create_model
    from itcp_deploy.pruning import build_space

    space = build_space(create_model("cifar_resnet20").eval(), (1, 3, 32, 32), model_spec="cifar_resnet20")
    macs_perf_model(space, tmp_path / "pm.json")
    out = tmp_path / "p.png"
    assert_user_error(run_cli("pareto", "cifar_resnet20", "--perf-model", str(tmp_path / "pm.json"),
                              "--criterion", "l1-fraction", "--methods", methods, "-o", str(out)), "--methods")
    assert not out.exists()


def test_sigterm_during_profile_engines_is_handled_like_ctrl_c(tmp_path):
    cache = tmp_path / "cache"
    args = ("profile-engines", *TINY, "--cache", str(cache), "--max-builds", "12", *FAST_PROFILE,
            "-o", str(tmp_path / "p.json"))
    proc = _start(*args)
    _wait_for(lambda: _builds(cache) >= 2 and any((cache / "artifacts").rglob(".build-*")), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "interrupted" in err and "Traceback" not in err
    assert [p.name for p in (cache / "artifacts").rglob(".build-*")] == []
    done = _builds(cache)
    code, out, err = run_cli(*args, "--json")
    assert code == 0, err
    assert json.loads(out)["builds_cached"] == done


def test_sigterm_is_deferred_during_an_atomic_write(tmp_path):
    import os

    from itcp_deploy.atomic_io import atomic_write, sigterm_as_interrupt

    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def write(f):
        f.write(b"new")
        os.kill(os.getpid(), signal.SIGTERM)
        f.write(b" and complete")

    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), sigterm_as_interrupt():
        atomic_write(target, write)
    assert target.read_bytes() == b"new and complete"

