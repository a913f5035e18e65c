"""The progressive schedule of the comparison (``itcp-progressive``, HALP-like): prune in ``K`` steps toward
the final budget, re-scoring the current model and re-solving over widths <= the current ones at each step,
with ``1/K`` of the finetuning images after each step: the same total finetuning budget as a one-shot row."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from bench.comparison.rows import (
    PROGRESSIVE,
    Bench,
    channel_importance_of,
    evaluate,
    finetune,
    group_scores_of,
    row_path,
    structure,
    train_images,
    write_row,
)
from itcp_deploy.atomic_io import read_json
from itcp_deploy.errors import ItcpError, UsageError
from itcp_deploy.perfmodel.model import PerfModel

if TYPE_CHECKING:
    from torch import nn


def progressive_rows(b: Bench) -> list[dict]:
    """One row per (speed-up, seed); a step the DP cannot solve becomes a note, not a crash."""
    rows: list[dict] = []
    if b.config.progressive_steps < 1:
        return rows
    for speedup in b.config.speedups:
        for seed in b.config.seeds:
            path = row_path(b, PROGRESSIVE, speedup, seed)
            if not path.exists():
                try:
                    write_row(b, path, _progressive(b, speedup, seed))
                except ItcpError as err:
                    b.notes.append(f"{PROGRESSIVE} x{speedup:g} seed {seed}: {err}")
                    b.log(f"{PROGRESSIVE} x{speedup:g} seed {seed} failed: {err}")
                    continue
            rows.append(read_json(path, "row"))
    return rows


@dataclass
class _Walk:
    """The model as it is narrowed step by step."""

    model: nn.Module
    current: dict[str, int]
    speedup: float
    steps: list[dict] = field(default_factory=list)
    tuned: dict = field(default_factory=dict)
    oneshot: float | None = None


def _step(b: Bench, walk: _Walk, k: int, budget: float, seed: int, chunk) -> None:
    """Rescore, re-solve narrower, prune, re-estimate BN, finetune on this step's chunk."""
    from itcp_deploy.pruning import apply_widths
    from itcp_deploy.search.baselines import SearchInputs, run_method
    from itcp_deploy.train import recalibrate_bn

    c, k_steps = b.config, b.config.progressive_steps
    first = walk.model is b.model
    space, perf = (b.space, b.perf) if first else restricted(b.space, b.perf, walk.model, walk.current,
                                                              b.inputs.input_shape)
    scores = b.scores if first else group_scores_of(b, walk.model, space, seed)
    importance = b.importance if first else channel_importance_of(b, walk.model, space, seed)
    solution = run_method("itcp", SearchInputs(space, perf, scores, importance), budget, bins=c.bins)
    model = apply_widths(walk.model, space, solution.widths, importance=importance)
    walk.current = {**walk.current, **solution.widths}
    recalibrate_bn(model, b.bn_loader(), num_batches=c.recipe.bn_batches)
    walk.oneshot = evaluate(b, model) if k == k_steps else None
    walk.tuned = finetune(b, model, seed, chunk, with_accuracy=k == k_steps)
    walk.model = walk.tuned["model"]
    walk.steps.append({"step": k, "budget_ms": budget, "predicted_ms": solution.cost,
                       "images": walk.tuned["images_per_epoch"]})
    b.log(f"{PROGRESSIVE} x{walk.speedup:g} seed {seed}: step {k}/{k_steps}, budget {budget:.4f} ms, predicted "
          f"{solution.cost:.4f} ms")


def _progressive(b: Bench, speedup: float, seed: int) -> dict:
    """K steps at budget ``dense * speedup ** (-k/K)`` (dense: the perf model's predicted latency)."""
    c, k_steps = b.config, b.config.progressive_steps
    dense_ms = b.perf.dense_ms()
    chunks = train_images(b, seed, k_steps)
    walk = _Walk(b.model, b.space.full_widths(), speedup)
    t0 = time.perf_counter()
    for k in range(1, k_steps + 1):
        _step(b, walk, k, dense_ms * speedup ** (-k / k_steps), seed, chunks[k - 1])
    return {
        "method": PROGRESSIVE, "speedup": speedup, "seed": seed, "budget_ms": dense_ms / speedup, "score": None,
        **structure(b, walk.model, walk.current),
        "accuracy_oneshot": walk.oneshot,
        "accuracy_finetuned": walk.tuned["accuracy"],
        "finetune_images_per_epoch": sum(len(chunk.dataset) for chunk in chunks),
        "finetune_wall_s": time.perf_counter() - t0,
        "progressive_steps": k_steps,
        "steps": walk.steps,
        "note": f"{k_steps} steps, each finetuned on its own 1/{k_steps} of the seed's images for "
        f"{c.recipe.epochs} epoch(s); one-shot = after the last prune + BN re-estimation, before "
        "the last short finetune",
    }


def restricted(space, perf, model, current: dict[str, int], input_shape: tuple[int, ...]):
    """The space of the pruned ``model`` (same group names) with each group's candidates cut to the dense
    candidates <= its current width, and the perf model's tables sliced to match: the DP can then only
    narrow groups further, and predicts exactly what the dense perf model predicts for such plans."""
    import numpy as np

    from itcp_deploy.pruning import build_space

    pruned_space = build_space(model, input_shape, model_spec=space.model, grid=space.grid)
    keep = {g.name: [i for i, w in enumerate(g.candidates) if w <= current[g.name]] for g in space.groups}
    groups = []
    for g in pruned_space.groups:
        dense_group = space.group(g.name)
        if g.full_width != current[g.name]:
            raise UsageError(
                f"group {g.name} is {g.full_width} wide, the plan says {current[g.name]}",
                "the progressive schedule needs the space of the model it pruned",
            )
        groups.append(replace(g, candidates=tuple(dense_group.candidates[i] for i in keep[g.name])))
    new_space = replace(pruned_space, groups=tuple(groups))
    tables = {
        layer.name: perf.tables[layer.name][np.ix_(keep[layer.in_group], keep[layer.out_group])]
        for layer in space.layers
    }
    return new_space, PerfModel(
        new_space, tables, perf.constant_ms, perf.method, perf.report, dict(perf.meta), perf.calibration
    )
