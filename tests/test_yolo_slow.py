"""The docs/detection.md example: an Ultralytics YOLOv8n (random weights, from the package's yaml) pruned by
``itcp_deploy.prune()`` to 1.3x on ONNX Runtime, saved, reloaded into Ultralytics and run through its own NMS.
Ultralytics (AGPL-3.0) is an optional test dependency: skipped without it. Minutes of CPU: marked slow."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None, reason="ultralytics (optional, AGPL) is absent")
def test_yolov8n_prunes_to_its_sla_and_reloads_into_ultralytics(tmp_path):
    from bench.yolo_prune import prune_yolo

    result = prune_yolo("yolov8n.yaml", 320, 1.3, tmp_path, max_builds=12)
    assert result["met_sla"], result
    assert result["params_pruned"] < result["params_dense"]
    assert result["head_out_channels_kept"]
    assert result["reloaded_boxes"] > 0  # Ultralytics' own post-processing ran on the pruned model
