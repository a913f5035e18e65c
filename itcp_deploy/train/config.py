"""Training settings as one dataclass, so a CLI run, a pipeline stage and a test configure alike."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from itcp_deploy.errors import UsageError


@dataclass
class TrainConfig:
    """SGD + cosine schedule, optional distillation, checkpoints and resume.

    Args:
        epochs: passes over the training set. Defaults to 1.
        lr: peak learning rate (linear warm-up, then cosine decay to 0 per step over ``epochs``).
            Defaults to 0.05 (the CIFAR recipe's 0.1 at batch 128, scaled to batch 64).
        momentum: SGD momentum (Nesterov). Defaults to 0.9.
        weight_decay: L2 on every parameter. Defaults to 5e-4.
        batch_size: per process. Defaults to 64 (small datasets still get enough steps per epoch).
        seed: seeds init-free randomness (data order, augmentation). Defaults to 0.
        teacher: a model to distil from (kept in eval mode, no gradients). Defaults to none.
        kd_alpha: weight of the distillation loss; ``1 - kd_alpha`` weighs the label loss. Defaults to 0.7.
        kd_temperature: softmax temperature of the distillation loss. Defaults to 4.
        checkpoint_dir: where ``checkpoint.pt`` (every epoch), ``model.pt`` and ``metrics.json`` go.
            Defaults to none (nothing written).
        resume: continue after the last finished epoch of ``checkpoint_dir/checkpoint.pt`` if there is one.
        max_steps_per_epoch: cut each epoch short (quick runs, tests). Defaults to full epochs.
        train_time_s: stop after the epoch in which this much wall time has passed. Defaults to no limit.
        num_workers: DataLoader processes. Defaults to 0.
        device: ``cpu``, ``cuda``, ``cuda:1``. Defaults to CUDA when available (the local rank's under DDP).
        quiet: no progress bars.
        precise_bn_batches: after the last epoch, recompute BatchNorm statistics over this many training
            batches (at most one epoch's worth) with the final weights; 0 keeps the running averages.
            Defaults to 50.
    """

    epochs: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0
    teacher: Any = None
    kd_alpha: float = 0.7
    kd_temperature: float = 4.0
    checkpoint_dir: str | Path | None = None
    resume: bool = False
    max_steps_per_epoch: int | None = None
    train_time_s: float | None = None
    num_workers: int = 0
    device: str | None = None
    quiet: bool = False
    precise_bn_batches: int = 50

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "batch_size": self.batch_size >= 1,
            "kd_alpha": 0 <= self.kd_alpha <= 1,
            "kd_temperature": self.kd_temperature > 0,
            "max_steps_per_epoch": self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
            "train_time_s": self.train_time_s is None or self.train_time_s > 0,
            "precise_bn_batches": self.precise_bn_batches >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise UsageError(f"training setting {name}={getattr(self, name)!r} is out of range",
                                 f"see `help(TrainConfig)` for what {name} accepts")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (the teacher is recorded by class name only)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "teacher"}
        data["teacher"] = None if self.teacher is None else type(self.teacher).__name__
        if data["checkpoint_dir"] is not None:
            data["checkpoint_dir"] = str(data["checkpoint_dir"])
        return data
