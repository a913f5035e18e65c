"""What every row of the comparison table shares (:class:`Bench`: the model, data, perf model, scores and
channel importance, loaded once through the pipeline's stages) and the steps a row is made of: evaluate,
finetune with the recipe, build the plan's engine once, record the structure, write the row."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.comparison.config import CompareConfig
from itcp_deploy.atomic_io import read_json, write_json
from itcp_deploy.pipeline.from_specs import Inputs
from itcp_deploy.pipeline.meter import TargetMeter
from itcp_deploy.pipeline.stages import Log

if TYPE_CHECKING:
    from torch import nn

    from itcp_deploy.data import DatasetInfo
    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.space import PruningSpace

PROGRESSIVE = "itcp-progressive"
DENSE = "dense"


@dataclass
class Bench:
    """What every row shares, loaded once."""

    config: CompareConfig
    out: Path
    log: Log
    inputs: Inputs
    space: PruningSpace
    perf: PerfModel
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    importance: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> nn.Module:
        return self.inputs.model

    def bn_loader(self):
        return self.inputs.loader(self.config.recipe.batch_size, train=True, seed=0)

    def test_loader(self):
        r = self.config.recipe
        return self.inputs.loader(r.batch_size, train=False, max_samples=r.test_samples)


def cached_arrays(path: Path, compute: Callable[[], dict]) -> dict[str, np.ndarray]:
    if not path.exists():
        write_json(path, {k: [float(x) for x in v] for k, v in compute().items()})
    return {k: np.asarray(v, dtype=float) for k, v in read_json(path, path.stem).items()}


def score_groups(inputs: Inputs, model: nn.Module, space: PruningSpace, criterion: str, *, batch_size: int,
                 samples: int, seed: int = 0, cache_path: Path | None = None) -> dict[str, np.ndarray]:
    """Group scores of ``model`` over ``samples`` training images (held-out test images for ``sensitivity``)."""
    from itcp_deploy.pruning import group_scores

    loader = inputs.loader(batch_size, train=True, seed=seed, max_samples=samples)
    calib = inputs.loader(batch_size, train=False, max_samples=samples)
    return group_scores(model, space, criterion, loader=loader, calib_loader=calib, cache_path=cache_path)


def group_scores_of(b: Bench, model: nn.Module, space: PruningSpace, seed: int = 0) -> dict[str, np.ndarray]:
    """The pipeline's score stage on ``model`` (cached for the dense model only)."""
    c = b.config
    cache = b.out / "sensitivity_cache.json" if model is b.model else None
    return score_groups(b.inputs, model, space, c.criterion, batch_size=c.recipe.batch_size,
                        samples=c.score_samples, seed=seed, cache_path=cache)


def channel_importance_of(b: Bench, model: nn.Module, space: PruningSpace, seed: int = 0) -> dict[str, np.ndarray]:
    from itcp_deploy.pruning import channel_importance

    c = b.config
    loader = b.inputs.loader(c.recipe.batch_size, train=True, seed=seed, max_samples=c.score_samples)
    return channel_importance(model, space, c.importance, loader=loader)


def row_path(b: Bench, method: str, speedup: float, seed: int) -> Path:
    steps = f"-k{b.config.progressive_steps}" if method == PROGRESSIVE else ""
    return b.out / "rows" / f"{method}{steps}_x{speedup:g}_seed{seed}.json"


def evaluate(b: Bench, model: nn.Module) -> float:
    from itcp_deploy.train import evaluate as evaluate_model

    return float(evaluate_model(model, b.test_loader())["accuracy"])


def train_images(b: Bench, seed: int, parts: int = 1) -> list[DatasetInfo]:
    """The seed's finetuning subset (``train_subset`` seeded images, all if None), split into ``parts``
    disjoint chunks (the progressive schedule finetunes on one chunk per step)."""
    from torch.utils.data import Subset

    from itcp_deploy.data import seeded_indices

    train = b.inputs.train
    n = len(train.dataset)
    indices = seeded_indices(n, b.config.recipe.train_subset or n, seed)
    return [replace(train, dataset=Subset(train.dataset, chunk.tolist()))
            for chunk in np.array_split(np.asarray(indices), parts)]


def finetune(b: Bench, model: nn.Module, seed: int, info: DatasetInfo, with_accuracy: bool = True) -> dict:
    """Finetune a copy of ``model`` with the recipe on ``info`` (a subset from :func:`train_images`)."""
    from itcp_deploy.train import TrainConfig, train

    r = b.config.recipe
    tuned = copy.deepcopy(model)
    if r.epochs == 0:
        return {"model": tuned, "accuracy": None, "images_per_epoch": 0, "wall_s": 0.0}
    t0 = time.perf_counter()
    config = TrainConfig(epochs=r.epochs, lr=r.lr, batch_size=r.batch_size, seed=seed, device="cpu",
                         teacher=b.model if r.distill else None,  # the dense model, as `run --distill`
                         quiet=True, precise_bn_batches=r.bn_batches)
    train(tuned, info, None, config)
    tuned = tuned.cpu().eval()
    return {"model": tuned, "accuracy": evaluate(b, tuned) if with_accuracy else None,
            "images_per_epoch": len(info.dataset), "wall_s": time.perf_counter() - t0}


def dense_meter(b: Bench, speedup: float = 1.0) -> TargetMeter:
    """The bench's engines measured against the dense engine (the run's measuring, with no safety margin:
    a row's target is 1 / speed-up of dense itself)."""
    from itcp_deploy.target import LatencyTarget

    dense = b.out / "engines" / "engines" / engine_of(b, b.model, b.space.full_widths())
    return TargetMeter(b.config.engine, LatencyTarget(speedup=speedup, margin=0.0), dense, b.config.measure_timing)


def engine_of(b: Bench, model: nn.Module, widths: dict[str, int]) -> str:
    """Build the engine of a plan once (latency depends on the structure, not the weights); returns its id."""
    from itcp_deploy.engines.build import build_engine

    engine_id = (DENSE if widths == b.space.full_widths()
                 else "plan-" + hashlib.sha1(json.dumps(sorted(widths.items())).encode()).hexdigest()[:10])
    if not (b.out / "engines" / "engines" / engine_id).exists():
        build_engine(model, b.inputs.input_shape, b.out / "engines", engine_id, b.config.engine)
    return engine_id


def structure(b: Bench, model: nn.Module, widths: dict[str, int]) -> dict:
    """Widths, MACs, params, predicted latency and engine id of a pruned model."""
    from itcp_deploy.pruning import count_macs_params

    macs, params = count_macs_params(model, b.inputs.input_shape)
    widths = {g.name: int(widths[g.name]) for g in b.space.prunable}
    on_grid = all(widths[g.name] in g.candidates for g in b.space.prunable)  # a peer's may fall between
    return {"widths": widths, "macs": int(macs), "params": int(params),
            "predicted_ms": b.perf.predict_ms(widths) if on_grid else None,
            "engine": engine_of(b, model, {**b.space.full_widths(), **widths})}


def tuned_fields(tuned: dict) -> dict:
    return {"accuracy_finetuned": tuned["accuracy"], "finetune_images_per_epoch": tuned["images_per_epoch"],
            "finetune_wall_s": tuned["wall_s"]}


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f} ms"


def _pct(accuracy: float | None) -> str:
    return "n/a" if accuracy is None else f"{accuracy:.2f}%"


def write_row(b: Bench, path: Path, row: dict) -> None:
    write_json(path, row)
    b.log(f"{row['method']:>17} x{row['speedup']:<5g} seed {row['seed']}: "
          f"predicted {_ms(row['predicted_ms'])} (budget {row['budget_ms']:.4f}), "
          f"one-shot {_pct(row['accuracy_oneshot'])}, finetuned {_pct(row['accuracy_finetuned'])}")
