"""bench/zoo_224.py keeps each run's small files when asked, so a bad fit can be explained without a rerun."""

from __future__ import annotations

from bench.zoo_224 import KEPT, keep_folder


def test_keep_copies_the_runs_small_files_only(tmp_path):
    out = tmp_path / "work" / "out"
    out.mkdir(parents=True)
    for name in ("profile.json", "perf_model.json", "model.onnx"):
        (out / name).write_text(name)
    keep = tmp_path / "kept" / "probe" / "torchvision_resnet18"
    keep_folder(tmp_path / "work", keep)
    assert sorted(p.name for p in keep.iterdir()) == ["perf_model.json", "profile.json"]
    assert (keep / "profile.json").read_text() == "profile.json" and "model.onnx" not in KEPT
    keep_folder(tmp_path / "work", None)  # not asked: nothing written
    assert sorted(p.name for p in (tmp_path / "kept" / "probe").iterdir()) == ["torchvision_resnet18"]


def test_a_run_past_the_wall_cap_is_a_timeout_row(tmp_path):
    """The cap is the sweep's to set (--wall-cap): big models at 224 on a loaded machine need more than an hour."""
    from bench.zoo_224 import ROOT, SweepSettings, run_model

    (tmp_path / "work").mkdir()
    settings = SweepSettings("t", tmp_path / "cache", ROOT, wall_cap_s=0.5)
    row = run_model("torchvision:resnet18", tmp_path / "work", settings)
    assert row["exit"] == "timeout" and row["status"] == "fail" and row["label"] == "t" and row["wall_s"] < 30


def test_a_sweeps_run_dies_with_the_sweep():
    """Two runs orphaned by a killed sweep held the machine at load 5-6 while rows were measured: a child started
    with ``die_with_parent`` is killed with its parent (dead: gone, or a zombie left for init to reap)."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (f"import subprocess, sys; sys.path.insert(0, {str(root)!r}); from bench.processes import die_with_parent; "
            "p = subprocess.Popen(['sleep', '30'], preexec_fn=die_with_parent); print(p.pid, flush=True); p.wait()")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    for _ in range(50):
        status = Path(f"/proc/{child}/status")
        if not status.exists() or "\nState:\tZ" in status.read_text():
            return
        time.sleep(0.1)
    os.kill(child, 9)
    raise AssertionError("the sweep's run outlived the sweep")
