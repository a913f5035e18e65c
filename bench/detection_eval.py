"""The pieces of ``bench/detection_map.py``: the synthetic detector, its training loop, and mAP measured with
pycocotools on PyTorch or on a built engine.

mAP is measured on the shipped engine (the whole exported forward: resize, network, box decoding, NMS), because
an engine's accuracy is that engine's, not the PyTorch model's; the PyTorch number is kept beside it as a check.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from itcp_deploy.data.detection import SHAPES, detection_sample

DETECTOR = "ssdlite320_mobilenet_v3_large"
NUM_CLASSES = len(SHAPES) + 1  # the shapes and the background
TRAIN_SEED, TEST_SEED = 0, 1  # two disjoint streams of the synthetic set: training and held-out test images
Target = dict[str, torch.Tensor]
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (K, 4) xyxy, scores (K,), labels (K,)


def build_detector(size: int) -> nn.Module:
    """SSDLite with 3 shape classes, resizing to ``size`` (smaller than its 320 so CPU training takes minutes);
    random init through the project's own factory, nothing downloaded."""
    from itcp_deploy.models import create_model

    torch.manual_seed(0)
    return create_model(f"torchvision:{DETECTOR}", num_classes=NUM_CLASSES, image_size=size)


def batch_of(start: int, count: int, size: int, seed: int) -> tuple[torch.Tensor, list[Target]]:
    """Images ``start .. start + count - 1`` of stream ``seed``: ``(images, [targets])`` as the detector trains."""
    samples = [detection_sample(i, size, seed) for i in range(start, start + count)]
    return torch.stack([s[0] for s in samples]), [s[1] for s in samples]


@dataclass(frozen=True)
class TrainSpec:
    """One training run: AdamW at ``lr`` on a cosine schedule over ``seconds`` (or ``steps``, whichever ends
    first), batches of ``batch`` images from the training stream starting at image ``first``."""

    seconds: float
    steps: int
    batch: int
    size: int
    lr: float
    first: int = 0


def train(model: nn.Module, spec: TrainSpec, log: Callable[[str], None] = print) -> dict[str, float]:
    """Train ``model`` with its own detection loss (fresh synthetic images every step: no epochs, no
    overfitting); the schedule follows elapsed time when the budget is time. Returns steps, seconds, last loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=1e-4)
    model.train()
    start, step, loss = time.perf_counter(), 0, float("nan")
    while step < spec.steps and (elapsed := time.perf_counter() - start) < spec.seconds:
        done = max(elapsed / spec.seconds, step / spec.steps)
        for group in opt.param_groups:
            group["lr"] = spec.lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
        images, targets = batch_of(spec.first + step * spec.batch, spec.batch, spec.size, TRAIN_SEED)
        total = sum(model(images, targets).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        loss, step = float(total.detach()), step + 1
        if step % 100 == 0:
            log(f"step {step}: loss {loss:.3f} ({time.perf_counter() - start:.0f} s)")
    return {"steps": step, "seconds": round(time.perf_counter() - start, 1), "last_loss": loss}


def coco_map(detections: Sequence[Detections], targets: Sequence[Target]) -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 (COCO's 101-point AP, up to 100 detections per image) by pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b: Sequence[float]) -> list[float]:
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    annotations = []
    for image_id, t in enumerate(targets):
        for box, label in zip(t["boxes"].tolist(), t["labels"].tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": xywh(box), "area": w * h, "iscrowd": 0})
    results = [{"image_id": image_id, "category_id": int(label), "bbox": xywh(box), "score": float(score)}
               for image_id, (boxes, scores, labels) in enumerate(detections)
               for box, score, label in zip(boxes, scores, labels, strict=True)]
    if not results:  # pycocotools cannot load an empty result list; no detection is an AP of 0
        return {"map50": 0.0, "map": 0.0}
    gt = COCO()
    gt.dataset = {"images": [{"id": i} for i in range(len(targets))], "annotations": annotations,
                  "categories": [{"id": i + 1, "name": n} for i, n in enumerate(SHAPES)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"map50": max(float(evaluator.stats[1]), 0.0), "map": max(float(evaluator.stats[0]), 0.0)}


@torch.no_grad()
def torch_detections(model: nn.Module, images: torch.Tensor, chunk: int = 16) -> list[Detections]:
    """The PyTorch model's detections per image (eval mode: its whole forward, NMS included)."""
    model.eval()
    out: list[Detections] = []
    for i in range(0, len(images), chunk):
        flat = model(images[i:i + chunk])
        out += [tuple(t.numpy() for t in flat[k:k + 3]) for k in range(0, len(flat), 3)]
    return out


def engine_detections(artifact: Path, images: torch.Tensor) -> list[Detections]:
    """The ONNX Runtime engine's detections per image (its input is one image: the deployed batch of 1)."""
    from itcp_deploy.engines import EngineOptions, get_backend

    out: list[Detections] = []
    with get_backend("onnxruntime").runner(artifact, EngineOptions(threads=1)) as runner:
        (name, _), = runner.input_specs().items()
        for image in images:
            boxes, scores, labels = runner.infer({name: image[None].numpy().astype(np.float32)}).values()
            out.append((boxes, scores, labels))
    return out
