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
