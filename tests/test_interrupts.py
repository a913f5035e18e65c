"""Interrupts: Ctrl-C (SIGINT) and kill -9 in the middle of profiling, training and export, then a rerun.

A rerun reuses everything finished before the interrupt (profiling cache entries, training checkpoints) and
no interrupted write ever replaces a good file. Subprocess tests run the real console entry point.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ("tests.test_profiler:Tiny", "--input-shape", "1x3x16x16", "--trust-code")
FAST_PROFILE = ("--holdout", "1", "--rounds", "2", "--runs-per-round", "3")


# Ctrl-C reaches a terminal's foreground job, whose SIGINT is never ignored. A shell script's background job
# (`.ci/run &`) starts with SIGINT ignored; pytest and its children inherit that, and Python then installs no
# KeyboardInterrupt handler, so the child would not see the test's SIGINT at all: the child installs it itself.
_CHILD = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "from itcp_deploy.cli import main; sys.exit(main())")


def _start(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-c", _CHILD, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended (exit {proc.returncode}) before the interrupt point:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("interrupt point not reached in time")
        time.sleep(0.05)


def _builds(cache_dir: Path) -> int:
    path = cache_dir / "cache.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM entries WHERE kind = 'build'").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_kill_9_during_profile_engines_then_rerun_reuses_the_cache(tmp_path):
    cache = tmp_path / "cache"
    proc = _start("profile-engines", *TINY, "--cache", str(cache), "--max-builds", "12", *FAST_PROFILE,
                  "-o", str(tmp_path / "p.json"))
    _wait_for(lambda: _builds(cache) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    done = _builds(cache)
    assert done >= 2 and not (tmp_path / "p.json").exists()
    code, out, err = run_cli("profile-engines", *TINY, "--cache", str(cache), "--max-builds", "12", *FAST_PROFILE,
                             "-o", str(tmp_path / "p.json"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["builds_cached"] >= done and summary["builds_new"] + summary["builds_cached"] == 12
    assert (tmp_path / "p.json").exists()


def test_two_profile_engines_at_once_on_one_cache(tmp_path):
    cache = tmp_path / "cache"
    procs = [_start("profile-engines", *TINY, "--cache", str(cache), "--max-builds", "6", *FAST_PROFILE,
                    "-o", str(tmp_path / f"p{i}.json"), "--json") for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    profiles = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    ids = [sorted(e["engine_id"] for e in p["engines"]) for p in profiles]
    assert ids[0] == ids[1] and len(ids[0]) == 6
    assert _builds(cache) == 6  # one cache entry per plan, whoever built it
    code, out, _ = run_cli("profile-engines", *TINY, "--cache", str(cache), "--max-builds", "6", *FAST_PROFILE,
                           "-o", str(tmp_path / "p2.json"), "--json")
    assert code == 0 and json.loads(out)["builds_new"] == 0


def test_ctrl_c_during_engine_building_then_rerun(tmp_path, monkeypatch):
    from itcp_deploy.engines import get_backend

    backend_type = type(get_backend("onnxruntime"))
    real_builder = backend_type.builder
    calls = {"n": 0}

    def interrupting_builder(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_builder(self, *args, **kwargs)

    monkeypatch.setattr(backend_type, "builder", interrupting_builder)
    cache = tmp_path / "cache"
    args = ("profile-engines", *TINY, "--cache", str(cache), "--max-builds", "5", *FAST_PROFILE,
            "-o", str(tmp_path / "p.json"), "--json")
    code, _, err = run_cli(*args)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert _builds(cache) == 2 and not (tmp_path / "p.json").exists()
    leftovers = [p.name for p in (cache / "artifacts").rglob(".build-*")]
    assert leftovers == [], leftovers  # the half-built engine's staging directory is gone
    monkeypatch.setattr(backend_type, "builder", real_builder)
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert json.loads(out)["builds_cached"] == 2


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_ctrl_c_during_training_then_resume(tmp_path, command):
    import torch

    from itcp_deploy.models import create_model

    out = tmp_path / "run"
    extra: tuple[str, ...] = ()
    if command == "finetune":
        torch.save(create_model("cifar_resnet20").state_dict(), tmp_path / "w.pt")
        extra = ("--weights", str(tmp_path / "w.pt"))
    common = (command, "cifar_resnet20", "--data", "digits", "--out", str(out), "--max-steps-per-epoch", "2",
              "--batch-size", "16", "--quiet", *extra)
    proc = _start(*common, "--epochs", "200")
    _wait_for(lambda: (out / "checkpoint.pt").exists(), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "Traceback" not in err
    done = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= done < 200
    code, stdout, err = run_cli(*common, "--epochs", str(done + 1), "--resume", "--json")
    assert code == 0, err
    metrics = json.loads(stdout)
    assert metrics["resumed_from_epoch"] == done and metrics["epochs_completed"] == done + 1
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, done + 2))


def test_ctrl_c_during_export_keeps_the_good_onnx(tmp_path, monkeypatch):
    import torch

    out = tmp_path / "model.onnx"
    out.write_bytes(b"the good onnx")

    def interrupted(model, args, f, *rest, **kwargs):
        Path(f).write_bytes(b"half an onnx")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", interrupted)
    code, _, err = run_cli("export", "cifar_resnet20", "--input-shape", "1x3x32x32", "--out", str(out))
    assert code == 130 and "Traceback" not in err
    assert out.read_bytes() == b"the good onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


KILLED_EXPORT = """
import os, signal, sys
from pathlib import Path
import torch
def killed(model, args, f, *rest, **kwargs):
    Path(f).write_bytes(b"half an onnx")
    os.kill(os.getpid(), signal.SIGKILL)
torch.onnx.export = killed
from itcp_deploy.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_during_export_keeps_the_good_onnx(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the good onnx")
    proc = subprocess.run([sys.executable, "-c", KILLED_EXPORT, "export", "cifar_resnet20", "--input-shape",
                           "1x3x32x32", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert out.read_bytes() == b"the good onnx"
    # kill -9 runs no cleanup: the temp file stays beside it, hidden, never under the final name
    assert all(p.name.startswith(".model.onnx.") and p.name.endswith(".tmp")
               for p in tmp_path.iterdir() if p != out)
