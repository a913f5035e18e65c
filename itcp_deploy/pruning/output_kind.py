"""Whether a model's output is classification logits, and the data-free fallback when it is not.

The ``taylor`` and ``sensitivity`` group scores and the ``taylor`` channel importance differentiate or measure
a classification loss (cross-entropy of ``(N, classes)`` logits). A segmentation model (a dict of dense
maps), a detector or a model with several outputs has no such loss here, so its groups are scored by the
data-free ``magnitude`` score and its channels chosen by ``l1`` importance instead, and the run says so once.
A detector given labelled boxes (:func:`own_loss_applies`) is scored with its own training loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

LOSS_SCORES = ("taylor", "sensitivity")
LOSS_IMPORTANCE = ("taylor",)
DATA_FREE_SCORE = "magnitude"
DATA_FREE_IMPORTANCE = "l1"


def is_logits(output: object) -> bool:
    """An ``(N, classes)`` tensor: what cross-entropy against class labels applies to."""
    return isinstance(output, torch.Tensor) and output.dim() == 2


def gives_logits(model: nn.Module, input_shape: tuple[int, ...]) -> bool:
    """One eval-mode forward pass on zeros; the model's mode is restored."""
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            return is_logits(model(torch.zeros(tuple(input_shape))))
    finally:
        model.train(training)


def own_loss_applies(model: nn.Module, targets: object) -> bool:
    """A model that computes its own loss (a detector) and a batch's targets that it reads: one
    ``{"boxes", "labels"}`` dict per image, as torchvision's detectors take them."""
    from itcp_deploy.pruning.importance import computes_own_loss

    return computes_own_loss(model) and isinstance(targets, list | tuple) and bool(targets) and all(
        isinstance(t, dict) and {"boxes", "labels"} <= set(t) for t in targets)


@dataclass(frozen=True)
class Criteria:
    """The group score and channel importance a run uses, and the note that says why if they changed."""

    score: str
    importance: str
    note: str | None = None


def criteria_for(model: nn.Module, input_shape: tuple[int, ...], score: str, importance: str) -> Criteria:
    """``(score, importance)`` unchanged for a classifier; the data-free pair where a loss-based one was asked
    of a model without classification logits."""
    if (score not in LOSS_SCORES and importance not in LOSS_IMPORTANCE) or gives_logits(model, input_shape):
        return Criteria(score, importance)
    new_score = DATA_FREE_SCORE if score in LOSS_SCORES else score
    new_importance = DATA_FREE_IMPORTANCE if importance in LOSS_IMPORTANCE else importance
    note = (f"the model's output is not classification logits, so no classification loss applies: group "
            f"scores use the data-free {new_score!r} criterion (asked: {score!r}) and channels are chosen by "
            f"{new_importance!r} importance (asked: {importance!r})")
    return Criteria(new_score, new_importance, note)
