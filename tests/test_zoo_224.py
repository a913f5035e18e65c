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
