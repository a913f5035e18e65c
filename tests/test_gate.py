"""`check-latency`: exit 0 on a met limit, 1 on a miss, 2 on bad input; the ratio form measures interleaved."""

from __future__ import annotations

import json

import pytest
import torch

from itcp_deploy.engines.build import EngineSpec, build_engine
from tests.conftest import run_cli

FAST = ["--json"]


def _net(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 10)).eval()


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    small = build_engine(_net(8), (1, 3, 32, 32), tmp, "small", EngineSpec())
    big = build_engine(_net(96), (1, 3, 32, 32), tmp, "big", EngineSpec())
    return small.main_file, big.main_file


def test_absolute_sla_met_and_missed(engines):
    small, _ = engines
    code, out, _ = run_cli("check-latency", str(small), "--sla-ms", "1000", *FAST)
    assert code == 0 and json.loads(out)["passed"] is True
    code, out, _ = run_cli("check-latency", str(small), "--sla-ms", "0.000001", *FAST)
    assert code == 1 and json.loads(out)["passed"] is False


def test_ratio_gate_orders_small_and_big(engines):
    small, big = engines
    code, out, _ = run_cli("check-latency", str(small), "--reference", str(big), "--max-ratio", "1.0", *FAST)
    result = json.loads(out)
    assert code == 0, result
    assert result["form"] == "ratio" and result["measured"] < 1.0
    code, out, _ = run_cli("check-latency", str(big), "--reference", str(small), "--max-ratio", "1.0", *FAST)
    assert code == 1 and json.loads(out)["measured"] > 1.0


@pytest.mark.parametrize("args", [
    ["missing.onnx", "--sla-ms", "1"],
    ["{small}"],
    ["{small}", "--sla-ms", "1", "--reference", "{big}", "--max-ratio", "2"],
    ["{small}", "--reference", "{big}"],
    ["{small}", "--sla-ms", "0"],
    ["{small}", "--sla-ms", "abc"],
    ["{small}", "--sla-ms", "1", "--percentile", "75"],
    ["{small}", "--sla-ms", "1", "--backend", "tensorflow"],
    ["{dir}", "--sla-ms", "1"],
])
def test_bad_input_exits_2_with_one_line(engines, tmp_path, args):
    small, big = engines
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    args = [a.format(small=small, big=big, dir=tmp_path) for a in args]
    code, _, err = run_cli("check-latency", *args)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_corrupt_engine_exits_2(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    code, _, err = run_cli("check-latency", str(garbage), "--sla-ms", "1")
    assert code == 2 and "Traceback" not in err, err


def test_min_agreement_gates_on_the_engines_own_predictions(engines):
    """Issue 25: CI can gate on accuracy too: top-1 agreement with the reference on --data's test images. An
    engine agrees with itself; a different (random) net of the same speed class does not, and fails the gate
    although its latency passes."""
    small, big = engines
    agree = ["--min-agreement", "0.99", "--data", "digits", *FAST]
    code, out, err = run_cli("check-latency", str(small), "--reference", str(small), "--max-ratio", "2", *agree)
    assert code == 0, err
    assert json.loads(out)["agreement"] == 1.0
    code, out, _ = run_cli("check-latency", str(small), "--reference", str(big), "--max-ratio", "1.0", *agree)
    result = json.loads(out)
    assert code == 1 and result["measured"] < 1.0 and result["agreement"] < 0.99


@pytest.mark.parametrize("extra", [["--min-agreement", "0.9"], ["--min-agreement", "1.5", "--data", "digits"]])
def test_min_agreement_without_data_or_out_of_range_is_one_line(engines, extra):
    small, big = engines
    code, _, err = run_cli("check-latency", str(small), "--reference", str(big), "--max-ratio", "1", *extra)
    assert code == 2 and "--min-agreement" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("load, warned", [(64.0, True), (0.0, False)])
def test_a_busy_machine_is_said_once_while_measuring(engines, monkeypatch, load, warned):
    """Preemption on a machine with more runnable threads than cores adds a time slice to long runs, which the
    noise floor cannot show: check-latency says so in one warning line, at most once per spell, and is silent
    when the machine is quiet (the load average is faked: the test must not depend on the CI machine's)."""
    from itcp_deploy.profiling import timing

    monkeypatch.setattr(timing.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(timing, "_last_busy_note", -timing.BUSY_NOTE_EVERY_S)
    small, big = engines
    code, _, err = run_cli("check-latency", str(small), "--reference", str(big), "--max-ratio", "1.0", *FAST)
    assert code == 0
    notes = [line for line in err.splitlines() if "machine is busy" in line]
    assert len(notes) == (1 if warned else 0)  # two engines, many rounds: still one line
    if warned:
        assert notes[0].startswith("warning: ") and "load average 64.0" in notes[0] and "Fix:" in notes[0]
