"""Learning-rate schedule: linear warm-up, then cosine decay to zero, stepped once per batch."""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """LR multiplier at step ``s``: ``(s+1)/w`` during ``w`` warm-up steps, then a half cosine to 0.

    Warm-up lasts 10% of the run or one epoch, whichever is shorter: short runs (a few dozen steps on a
    small dataset) otherwise diverge at the peak rate, and long runs barely notice it.
    """

    def __init__(self, total_steps: int, steps_per_epoch: int) -> None:
        self.total_steps = max(1, total_steps)
        self.warmup_steps = max(1, min(self.total_steps // 10, steps_per_epoch))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, steps_per_epoch))


def stretch(scheduler: torch.optim.lr_scheduler.LambdaLR, total_steps: int, steps_per_epoch: int) -> None:
    """After loading a checkpoint: fit the schedule to the (possibly larger) epoch count of this run."""
    scheduler.lr_lambdas = [WarmupCosine(total_steps, steps_per_epoch)]
