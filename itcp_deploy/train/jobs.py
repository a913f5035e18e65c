"""What the ``train``, ``finetune`` and ``evaluate`` commands do, callable from Python with the same inputs.

A job names the model and data the way the CLI does (zoo name or spec, ``--data`` spec), builds them, runs
:func:`~itcp_deploy.train.train` or :func:`~itcp_deploy.train.evaluate`, and saves the resolved job beside
the outputs (``job.json``) so a CLI run can be replayed from Python.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from itcp_deploy.atomic_io import write_json
from itcp_deploy.errors import UsageError
from itcp_deploy.paths import check_output_dir, check_outputs
from itcp_deploy.train.config import TrainConfig

JOB_NAME = "job.json"


@dataclass
class TrainJob:
    """One ``itcp-deploy train``/``finetune`` run.

    Args:
        model: a spec for :func:`itcp_deploy.models.create_model` (``cifar_resnet20``, ...).
        data: a ``--data`` spec (see :func:`itcp_deploy.data.load_dataset`).
        out_dir: receives ``checkpoint.pt``, ``model.pt``, ``metrics.json`` and ``job.json``.
        weights: starting weights (finetuning). Defaults to none (training from scratch).
        teacher: a model spec to distil from. Defaults to none.
        teacher_weights: the teacher's weights.
        trust_code: allow model specs whose loading runs code (pickled models, ``module:factory``).
        download: fetch CIFAR into the data directory first.
        config: optimisation settings; ``checkpoint_dir`` and ``teacher`` are filled in from this job.
    """

    model: str
    data: str
    out_dir: Path
    weights: str | None = None
    teacher: str | None = None
    teacher_weights: str | None = None
    trust_code: bool = False
    download: bool = False
    config: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(replace(self, config=TrainConfig())).items() if k != "config"}
        data["out_dir"] = str(self.out_dir)
        data["config"] = self.config.to_dict()
        return data


def run_train_job(job: TrainJob) -> dict[str, Any]:
    """Build model (and teacher) and data from ``job``, train, and return the metrics of :func:`train`.

    The test split is evaluated after every epoch unless the data has no splits (an ImageFolder without
    ``train``/``val`` sub-directories, a single batch file), where it would be the training data itself.
    """
    import torch
    import torch.distributed as dist

    from itcp_deploy.data import load_dataset
    from itcp_deploy.models import create_model
    from itcp_deploy.train.distributed import shutdown
    from itcp_deploy.train.loop import train

    if job.teacher_weights and not job.teacher:
        raise UsageError("--teacher-weights was given without --teacher", "add --teacher MODEL")
    check_output_dir("--out", job.out_dir)
    out = Path(job.out_dir)
    check_outputs({f"--out's {name}": out / name for name in ("model.pt", "checkpoint.pt", "metrics.json")},
                  {"weights": job.weights, "teacher weights": job.teacher_weights})
    train_info = load_dataset(job.data, "train", download=job.download)
    test_info = load_dataset(job.data, "test") if train_info.split is not None else None
    torch.manual_seed(job.config.seed)  # the same job initialises the same weights
    model = create_model(job.model, num_classes=train_info.num_classes, weights=job.weights,
                         trust_code=job.trust_code)
    teacher = None
    if job.teacher:
        teacher = create_model(job.teacher, num_classes=train_info.num_classes, weights=job.teacher_weights,
                               trust_code=job.trust_code)
    config = replace(job.config, checkpoint_dir=job.out_dir, teacher=teacher)
    joined_here = not dist.is_initialized()
    try:
        if _is_rank0():
            write_json(Path(job.out_dir) / JOB_NAME, job.to_dict())
        metrics = train(model, train_info, test_info, config)
    finally:
        if joined_here:
            shutdown()
    return {"model": job.model, "data": train_info.name, "out_dir": str(job.out_dir), **metrics}


def evaluate_model(
    model: str,
    data: str,
    *,
    weights: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    max_samples: int | None = None,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Top-1 accuracy of a model spec (with ``weights``) on one split of a ``--data`` spec.

    Returns:
        ``{"accuracy": percent, "loss", "n", "model", "weights", "data", "wall_s"}``.
    """
    from itcp_deploy.data import load_dataset, make_loader
    from itcp_deploy.models import create_model
    from itcp_deploy.train.distributed import resolve_device
    from itcp_deploy.train.evaluation import evaluate

    started = time.perf_counter()
    info = load_dataset(data, split)
    info.require_labels("top-1 accuracy")
    net = create_model(model, num_classes=info.num_classes, weights=weights, trust_code=trust_code)
    device = resolve_device(None)
    loader = make_loader(info, batch_size, shuffle=False, max_samples=max_samples)
    result = evaluate(net.to(device), loader, device=device)
    return {**result, "model": model, "weights": weights, "data": info.name,
            "wall_s": time.perf_counter() - started}


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")
