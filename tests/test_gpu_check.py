"""The GPU check (bench/gpu_check.py, issue 28) still works on the day a session is lent a GPU: its CPU dry run
runs every part at toy sizes; a failing part leaves its one-line error and the next part runs; the files it
leaves in OUT are what the device tool brings back. Also the staircase on the torch backend it measures, and the
rule that docs/gpu.md's device call fits the tool (command length, carried paths)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
DOC = ROOT / "docs" / "gpu.md"
TOOL_FILES_BACK = 8  # the device tool brings back at most 8 files from $OUT


def _check(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work"), *args],
                          capture_output=True, text=True, env=env, timeout=400)
    summary = tmp_path / "out" / "summary.json"
    assert summary.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(summary.read_text())


def test_dry_run_measures_every_part_and_survives_a_failing_one(tmp_path):
    parts = "staircase,run:no_such_model,profile:cifar_resnet20,run:cifar_resnet20"
    done, s = _check(tmp_path, "--model", "no_such_model@1x3x8x8", "--model", "cifar_resnet20@1x3x16x16",
                     "--parts", parts)
    assert done.returncode == 0, done.stderr[-3000:]
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(out) + 1 <= TOOL_FILES_BACK  # + the log the device command tees into OUT
    assert "summary.json" in out and all(p.endswith(".png") for p in out if p != "summary.json")

    stair = s["parts"]["staircase"]
    for name in ("staircase_b1_fp16", "staircase_b1_fp32", "staircase_b2_fp16", "staircase_b2_fp32"):
        assert len(stair[name]["median_ms"]) == 16 and stair[name]["png"] in out
        assert isinstance(stair[name]["channel_block"], int)
    assert s["bars"]["staircase_plotted"]["pass"] is True

    bogus = s["parts"]["run:no_such_model"]
    assert "no_such_model" in bogus["2x_error_fp32"] and "\n" not in bogus["2x_error_fp32"]
    assert s["bars"]["run:no_such_model:2x"]["pass"] is None  # not measured, and says why
    assert "no_such_model" in s["bars"]["run:no_such_model:2x"]["why"]

    profile = s["parts"]["profile:cifar_resnet20"]  # ran after the failing part
    assert profile["precision"] == "fp16" or "fp16" in profile["error_fp16"]  # fp32 only where fp16 is refused
    fit = s["bars"]["fit:cifar_resnet20"]
    assert fit["pass"] == (fit["held_out_err_pct"] <= max(1.5 * fit["noise_pct"], 2.0))
    run = s["parts"]["run:cifar_resnet20"]["2x"]
    assert 1 <= run["rounds"] <= 2 and run["sla_ms"] > 0  # the dry run's max_rounds reached the loop
    bar = s["bars"]["run:cifar_resnet20:2x"]
    assert bar["pass"] == (run["met_sla"] and run["measured_over_sla"] >= 0.9 and run["rounds"] <= 2)
    assert s["bars"]["all_pass"] is False  # a part was not measured

    table = subprocess.run([sys.executable, str(SCRIPT), "--markdown", str(tmp_path / "out" / "summary.json")],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert table.returncode == 0 and "| cifar_resnet20:2x | " in table.stdout


def test_parts_past_the_budget_are_skipped_with_a_note(tmp_path):
    done, s = _check(tmp_path, "--budget-s", "0")
    assert done.returncode == 0
    assert s["parts"] and all("time budget" in p["skipped"] for p in s["parts"].values())
    assert s["bars"]["fit:cifar_resnet20"]["pass"] is None and s["bars"]["all_pass"] is False


def _live_processes_naming(text: str) -> list[str]:
    """Command lines that contain ``text``, of processes not yet ended (zombies, awaiting their reaper, count
    as ended: SIGKILL has done its work)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):  # ended meanwhile
            continue
        found += [args] if text in args and state not in "ZX" else []
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_a_part_stopped_at_its_cap_takes_its_cli_child_with_it(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    import gpu_check

    args = gpu_check.parse(["--device", "cpu", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    (tmp_path / "work").mkdir()
    error = gpu_check.spawn("profile:cifar_resnet20", args, timeout=4)  # profile-engines takes longer than 4 s
    assert error is not None and "cap of 4 s" in error
    for _ in range(20):  # SIGKILL is delivered at once, the exit takes a moment
        if not (left := _live_processes_naming(str(tmp_path / "work"))):
            break
        time.sleep(0.1)
    assert left == []


def test_staircase_on_the_torch_backend_at_fp16_and_batch(tmp_path):
    from itcp_deploy.errors import UsageError
    from itcp_deploy.profiling.staircase import StaircaseConfig, measure_staircase
    from itcp_deploy.profiling.timing import TimingConfig

    timing = TimingConfig(warmup=1, rounds=2, runs_per_round=2)
    points = measure_staircase(StaircaseConfig(in_channels=4, hw=6, max_width=3, backend="torch", batch=3,
                                               precision="fp16", timing=timing))
    assert [p.macs for p in points] == [3 * 9 * 4 * 36 * w for w in (1, 2, 3)]
    assert all(p.median_ms > 0 for p in points)
    with pytest.raises(UsageError, match="fp32 only"):  # an engine built from ONNX: fp32, on the CPU
        measure_staircase(StaircaseConfig(max_width=2, precision="fp16", timing=timing))
    with pytest.raises(UsageError, match="CPU engine only"):
        measure_staircase(StaircaseConfig(max_width=2, device="cuda", timing=timing))


def test_torch_runner_runs_a_module_at_fp16_from_float32_feeds():
    import torch

    from itcp_deploy.engines.torch.runner import TorchRunner
    from itcp_deploy.errors import UsageError

    conv = torch.nn.Conv2d(2, 3, 3, padding=1).eval()
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    with torch.no_grad():
        ref = conv(torch.from_numpy(x)).numpy()
    with TorchRunner(conv, input_shape=(1, 2, 5, 5), precision="fp16") as runner:
        out = runner.infer({"input": x})["output"]
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-2 and not np.array_equal(out, ref)  # fp16, close to fp32
    with pytest.raises(UsageError, match="int8"):
        TorchRunner(conv, input_shape=(1, 2, 5, 5), precision="int8")


def _device_call() -> dict:
    """The ```json block of docs/gpu.md that holds the device tool's run arguments."""
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)
    calls = [json.loads(b) for b in blocks if '"command"' in b]
    assert len(calls) == 1, "docs/gpu.md must hold exactly one device call as a ```json block"
    return calls[0]


def test_documented_device_call_fits_the_tool():
    call = _device_call()
    assert len(call["command"]) <= 2000 and 1 <= call["timeout_s"] <= 600
    assert len(call["carry"]) <= 8
    assert "PYTHONUNBUFFERED=1" in call["command"] and "tee -a $OUT/log" in call["command"]
    script = next(w for w in shlex.split(call["command"].replace(";", " ; ")) if w.endswith("gpu_check.py"))
    assert (ROOT / script).is_file()
    shell = "\n".join(re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S))
    made = set(re.findall(r"\s-d\s+(\S+)", shell))  # what the documented steps create (pip download -d DIR)
    for path in call["carry"]:
        assert (ROOT / path).exists() or path in made, f"carried {path} neither exists nor is made by the steps"
        probe = f"{path}/probe.whl"  # a file inside: the folder may not exist yet on a fresh clone
        ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT).returncode == 0
        assert ignored, f"carried {path} must be git-ignored (tracked files travel anyway)"
