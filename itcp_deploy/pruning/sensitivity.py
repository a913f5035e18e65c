"""The ``sensitivity`` group score: the measured loss increase when one group alone is pruned.

For every prunable group and every candidate width below full: prune that group alone
(:func:`~itcp_deploy.pruning.apply_widths`, channels chosen by ``settings.importance``), re-estimate BN
statistics on ``bn_images`` training images (:func:`itcp_deploy.train.recalibrate_bn`), and measure the mean
cross-entropy on ``calib_images`` held-out images. ``score = -(loss - base loss)``, where the base is the
unpruned model after the same BN recalibration, so recalibration noise cancels. Negative increases (noise)
are clipped to 0, then the running max makes scores non-decreasing; full width scores 0.

Cost: one recalibration + one evaluation per (group, width < full): ResNet-56 at the default grid has
30 groups and 250 evaluations; with 256 + 512 images that is about 768 image forwards each. The batches are
read once and kept in memory. ``settings.max_widths_per_group`` bounds the evaluations per group.

Results are cached in a JSON file keyed by a hash of the model weights, the space, the data actually used
and the settings; the file is rewritten after each group, so an interrupted run resumes where it stopped.
The cost (evaluations, seconds) is logged and stored beside the scores.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from itcp_deploy.atomic_io import read_json, write_json
from itcp_deploy.errors import CacheError, UsageError
from itcp_deploy.pruning.apply import apply_widths, channel_importance
from itcp_deploy.pruning.importance import Batch
from itcp_deploy.pruning.score_base import ScoreInputs, ScoreSettings, monotone
from itcp_deploy.space import ChannelGroup, PruningSpace

log = logging.getLogger(__name__)
CACHE_SCHEMA = 1


def take_images(loader: Iterable[Batch], num_images: int) -> list[Batch]:
    """The first ``num_images`` ``(images, labels)`` of a loader, as in-memory batches."""
    batches, count = [], 0
    for x, y in loader:
        keep = min(len(x), num_images - count)
        batches.append((x[:keep], y[:keep]))
        count += keep
        if count >= num_images:
            break
    if count == 0:
        raise UsageError("a loader for the sensitivity score yielded no images", "pass a non-empty data set")
    return batches


def _digest(h: hashlib._Hash, tensor: torch.Tensor) -> None:
    h.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
    h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())


def cache_key(model: nn.Module, space: PruningSpace, data: list[list[Batch]], settings: ScoreSettings) -> str:
    """Hash of model weights and buffers, the space, the exact batches used and the settings."""
    h = hashlib.sha256()
    h.update(json.dumps([space.to_dict(), asdict(settings)], sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        _digest(h, tensor)
    for batches in data:
        for x, y in batches:
            _digest(h, x)
            _digest(h, y)
    return h.hexdigest()[:24]


def _read_cache(path: Path | None) -> dict:
    if path is None or not path.exists():
        return {"schema": CACHE_SCHEMA, "entries": {}}
    data = read_json(path, "sensitivity cache")
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or data.get("schema") != CACHE_SCHEMA:
        raise CacheError(f"{path} is not a sensitivity cache of schema {CACHE_SCHEMA}",
                         "delete it to recompute")
    return data


def _loss(model: nn.Module, calib: list[Batch]) -> float:
    from itcp_deploy.train import evaluate

    return float(evaluate(model, calib)["loss"])


def _recalibrated(model: nn.Module, bn: list[Batch]) -> nn.Module:
    from itcp_deploy.train import recalibrate_bn

    return recalibrate_bn(model, bn, num_batches=len(bn))


def _evaluated_widths(group: ChannelGroup, limit: int | None) -> list[int]:
    below = list(group.candidates[:-1])
    if limit is None or len(below) <= limit:
        return below
    picks = np.unique(np.round(np.linspace(0, len(below) - 1, max(limit, 1))).astype(int))
    return [below[i] for i in picks]


def _group_scores(model: nn.Module, space: PruningSpace, group: ChannelGroup, data: tuple, base: float
                  ) -> tuple[list[float], int]:
    imp, bn, calib, settings = data
    widths = _evaluated_widths(group, settings.max_widths_per_group)
    measured = {}
    for w in widths:
        pruned = _recalibrated(apply_widths(model, space, {group.name: w}, importance=imp), bn)
        measured[w] = min(0.0, -(_loss(pruned, calib) - base))
    measured[group.full_width] = 0.0
    xs = sorted(measured)
    values = np.interp(group.candidates, xs, [measured[x] for x in xs])
    return monotone(values).tolist(), len(widths)


def sensitivity_scores(model: nn.Module, space: PruningSpace, inputs: ScoreInputs) -> dict[str, np.ndarray]:
    """Measured ``-(loss increase)`` per candidate width of every prunable group (module docstring)."""
    if inputs.loader is None or inputs.calib_loader is None:
        raise UsageError("the sensitivity score needs training data (BN recalibration) and a held-out "
                         "calibration set", "pass both loader and calib_loader")
    settings = inputs.settings
    bn = take_images(inputs.loader, settings.bn_images)
    calib = take_images(inputs.calib_loader, settings.calib_images)
    path = Path(inputs.cache_path) if inputs.cache_path is not None else None
    cache = _read_cache(path)
    key = cache_key(model, space, [bn, calib], settings)
    entry = cache["entries"].setdefault(key, {"model": space.model, "settings": asdict(settings),
                                              "scores": {}, "evaluations": 0, "seconds": 0.0})
    todo = [g for g in space.prunable if g.name not in entry["scores"]]
    if todo:
        start = time.perf_counter()
        imp = channel_importance(model, space, settings.importance, loader=bn,
                                 num_batches=settings.gradient_batches)
        base = _loss(_recalibrated(copy.deepcopy(model), bn), calib)
        for group in todo:
            scores, count = _group_scores(model, space, group, (imp, bn, calib, settings), base)
            entry["scores"][group.name] = scores
            entry["evaluations"] += count
            entry["seconds"] = round(entry["seconds"] + time.perf_counter() - start, 3)
            start = time.perf_counter()
            if path is not None:
                write_json(path, cache)
        log.info("sensitivity of %s: %d evaluations, %.1f s", space.model, entry["evaluations"],
                 entry["seconds"])
    return {g.name: np.asarray(entry["scores"][g.name], dtype=np.float64) for g in space.prunable}
