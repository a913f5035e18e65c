"""Prune an Ultralytics YOLO (random weights, built from the package's own yaml) with ``itcp_deploy.prune()`` to a
latency SLA on ONNX Runtime, then save it, load it back into Ultralytics and predict through its own NMS.

Ultralytics is AGPL-3.0: an optional dependency of this example and its slow test, never of itcp-deploy. Nothing
is downloaded (``YOLO_OFFLINE=1``, a yaml and not a ``.pt``).

    python bench/yolo_prune.py --model yolov8n.yaml --size 320 --speedup 1.3 --out /tmp/yolo_run
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch


def _offline(config_dir: Path) -> None:
    """Before Ultralytics is imported: no network check, settings in a scratch folder."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))


def _random_batches(size: int, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Unlabelled images for BatchNorm re-estimation (the scores of a model without logits need no labels)."""
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(4, 3, size, size, generator=g), torch.zeros(4)) for _ in range(n)]


def prune_yolo(model_yaml: str, size: int, speedup: float, out: Path, max_builds: int = 16) -> dict:
    """Prune, save, reload into Ultralytics, predict; returns the numbers the docs quote."""
    _offline(out / "ultralytics")
    from ultralytics import YOLO

    import itcp_deploy
    from itcp_deploy.pipeline.config import ProfileSettings

    torch.manual_seed(0)  # the same random weights on a rerun, which resumes from ``out``
    yolo = YOLO(model_yaml)
    detect = yolo.model.model[-1]
    detect.export, detect.format = True, "engine"  # the raw head Ultralytics exports for TensorRT: no NMS
    options = itcp_deploy.PruneOptions(name=Path(model_yaml).stem, quiet=False,
                                       profile=ProfileSettings(cache_dir=str(out / "cache"), max_builds=max_builds))
    result = itcp_deploy.prune(yolo.model.eval(), torch.rand(1, 3, size, size), speedup=speedup,
                               score_loader=_random_batches(size), out_dir=out / "run", options=options)
    pruned = result.model
    pruned.model[-1].export = False  # back to Ultralytics' own inference path (decoded boxes, then its NMS)
    weights = out / "pruned_yolo.pt"
    torch.save({"model": pruned, "train_args": {}}, weights)
    reloaded = YOLO(str(weights))
    image = (torch.rand(size, size, 3) * 255).to(torch.uint8).numpy()
    results = reloaded.predict(image, imgsz=size, conf=0.0, verbose=False)
    return {"model": model_yaml, "size": size, "sla_ms": result.sla_ms, "measured_ms": result.measured_ms,
            "dense_ms": result.report.dense_latency_ms, "met_sla": result.met_sla,
            "params_dense": result.report.params_dense, "params_pruned": result.report.params_final,
            "reloaded_boxes": len(results[0].boxes), "engine": str(result.engine_path),
            "head_out_channels_kept": _predictor_widths(reloaded.model) == _predictor_widths(yolo.model)}


def _predictor_widths(model: torch.nn.Module) -> dict[str, int]:
    """Output channels of the ``Detect`` head's final convs (``cv2.i.2`` boxes, ``cv3.i.2`` classes)."""
    return {n: m.out_channels for n, m in model.model[-1].named_modules()
            if isinstance(m, torch.nn.Conv2d) and n.endswith(".2")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8n.yaml")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--speedup", type=float, default=1.3)
    parser.add_argument("--max-builds", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="yolo_prune_"))
    print(json.dumps(prune_yolo(args.model, args.size, args.speedup, out, args.max_builds), indent=1))


if __name__ == "__main__":
    main()
