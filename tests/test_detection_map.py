"""The synthetic detection benchmark's pieces (bench/detection_map.py): its mAP on hand-made boxes, and a few
training steps, an export and an engine's mAP at a tiny scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")

from bench.detection_eval import (  # noqa: E402  (after the importorskip)
    TEST_SEED,
    TrainSpec,
    batch_of,
    build_detector,
    coco_map,
    engine_detections,
    torch_detections,
    train,
)

TARGETS = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0], [60.0, 20.0, 90.0, 70.0]]),
            "labels": torch.tensor([1, 3])},
           {"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]), "labels": torch.tensor([2])}]


def _perfect() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [(t["boxes"].numpy(), np.ones(len(t["labels"]), np.float32), t["labels"].numpy()) for t in TARGETS]


def test_map_of_perfect_predictions_is_one_and_of_none_is_zero():
    assert coco_map(_perfect(), TARGETS) == pytest.approx({"map50": 1.0, "map": 1.0})
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    assert coco_map([empty, empty], TARGETS) == {"map50": 0.0, "map": 0.0}


def test_map_counts_wrong_labels_and_loose_boxes():
    wrong = [(b, s, np.where(lab == 1, 2, 1)) for b, s, lab in _perfect()]  # every label wrong
    assert coco_map(wrong, TARGETS)["map50"] == 0.0
    shifted = [(b + np.float32(2.0), s, lab) for b, s, lab in _perfect()]  # IoU 0.73 to 0.87
    got = coco_map(shifted, TARGETS)
    assert got["map50"] == pytest.approx(1.0) and 0.1 < got["map"] < 0.9


def test_train_export_and_engine_map_agree(tmp_path):
    """A few training steps lower the loss path without error; the ONNX Runtime engine's mAP is the PyTorch
    model's (the same detections, up to float noise)."""
    import itcp_deploy

    torch.set_num_threads(1)
    model = build_detector(96)
    done = train(model, TrainSpec(seconds=60.0, steps=2, batch=2, size=96, lr=1e-3), log=lambda m: None)
    assert done["steps"] == 2 and np.isfinite(done["last_loss"])
    images, targets = batch_of(0, 4, 96, TEST_SEED)
    built = itcp_deploy.build_engine(model.eval(), images[:1], out_dir=tmp_path, name="det")
    engine, pytorch = engine_detections(built.engine_path, images), torch_detections(model, images)
    assert len(engine) == len(pytorch) == 4
    assert coco_map(engine, targets) == pytest.approx(coco_map(pytorch, targets), abs=1e-3)
