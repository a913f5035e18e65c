"""Training, finetuning, distillation, evaluation and BatchNorm recalibration (single process or torchrun).

Names load lazily so that ``import itcp_deploy.train`` does not import torch.
"""

from __future__ import annotations

from itcp_deploy.lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config",
    "train": "loop",
    "evaluate": "evaluation",
    "recalibrate_bn": "bn",
    "kd_loss": "distill",
    "load_checkpoint": "checkpoint",
    "TrainJob": "jobs",
    "run_train_job": "jobs",
    "evaluate_model": "jobs",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
