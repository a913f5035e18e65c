"""The training loss: cross-entropy, optionally blended with knowledge distillation from a teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: KL(teacher || student) at ``temperature``, scaled by T^2."""
    t = temperature
    log_student = F.log_softmax(student_logits / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * (t * t)


class TrainLoss:
    """``(1 - alpha) * CE(labels) + alpha * KD(teacher)``, or plain CE without a teacher."""

    def __init__(self, teacher: torch.nn.Module | None, alpha: float, temperature: float) -> None:
        self.teacher = teacher
        self.alpha = alpha
        self.temperature = temperature
        if teacher is not None:  # its forward runs under no_grad: its requires_grad flags stay the caller's, since
            teacher.eval()       # a model pruned from it later copies them (frozen, it would not be finetuned)

    def __call__(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, labels)
        if self.teacher is None or self.alpha == 0:
            return ce
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return (1 - self.alpha) * ce + self.alpha * kd_loss(logits, teacher_logits, self.temperature)
