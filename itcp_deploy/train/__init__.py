"""Training, finetuning, distillation, evaluation and BatchNorm recalibration (single process or torchrun).

Names load lazily so that ``import itcp_deploy.train`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "itcp_deploy.train.config",
    "train": "itcp_deploy.train.loop",
    "evaluate": "itcp_deploy.train.evaluation",
    "recalibrate_bn": "itcp_deploy.train.bn",
    "kd_loss": "itcp_deploy.train.distill",
    "load_checkpoint": "itcp_deploy.train.checkpoint",
    "TrainJob": "itcp_deploy.train.jobs",
    "run_train_job": "itcp_deploy.train.jobs",
    "evaluate_model": "itcp_deploy.train.jobs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
