"""What a run's stages read, as Python objects: the dense model, batches of ``(inputs, targets)``, the loss,
the finetuning callable and (optionally) an accuracy test set.

A user of :func:`itcp_deploy.prune` hands these over directly; ``itcp-deploy run`` makes them from its spec
strings (:mod:`~itcp_deploy.pipeline.from_specs`). Either way the stages run the same code. The user's
objects are checked at this boundary (:func:`check_model_input`, :meth:`ModelInputs.batches`,
:func:`check_finetuned`): one-line :class:`~itcp_deploy.errors.UsageError` s instead of failures deep inside
tracing or training.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from itcp_deploy.errors import UsageError
from itcp_deploy.pruning.importance import LossFn

#: ``finetune(model) -> model``: the user's own recovery training (their loop, optimiser, losses).
Finetune = Callable[[nn.Module], nn.Module]


@dataclass
class ModelInputs:
    """``model``: the dense network (left untouched); ``score_loader``: ``(inputs, targets)`` batches for the
    group scores, the kept channels and BatchNorm re-estimation; ``loss_fn``: their loss (cross-entropy when
    None); ``finetune``: recovery after pruning (none when None); ``eval_loader``: test batches for the top-1
    accuracy in the report (classifiers with the default loss only)."""

    model: nn.Module
    score_loader: Iterable[Any]
    loss_fn: LossFn | None = None
    finetune: Finetune | None = None
    eval_loader: Iterable[Any] | None = None
    _cache: list[tuple[Any, Any]] = field(default_factory=list, repr=False)
    _read_all: bool = field(default=False, repr=False)

    def batches(self, n: int) -> list[tuple[Any, Any]]:
        """The first ``n`` batches of ``score_loader`` (read once and kept, so a generator works too), checked."""
        if len(self._cache) < n and not self._read_all:
            self._cache = []
            for i, batch in enumerate(self.score_loader):
                self._cache.append(_checked_batch(batch, i))
                if len(self._cache) >= n:
                    break
            self._read_all = len(self._cache) < n
        if not self._cache:
            raise UsageError("score_loader yielded no batch", "pass a non-empty iterable of (inputs, targets)")
        return self._cache[:n]

    def accuracy(self, model: nn.Module) -> float | None:
        """Top-1 accuracy (%) on ``eval_loader``, or None (no test set, a custom loss, or outputs that are not
        classification logits, e.g. a segmentation model's dict of maps)."""
        if self.eval_loader is None or self.loss_fn is not None:
            return None
        from itcp_deploy.train import evaluate

        accuracy = evaluate(model, self.eval_loader)["accuracy"]
        return None if accuracy is None else float(accuracy)


def _checked_batch(batch: Any, index: int) -> tuple[Any, Any]:
    if not (isinstance(batch, tuple | list) and len(batch) == 2 and isinstance(batch[0], torch.Tensor)):
        kind = type(batch).__name__ + (f" of {len(batch)}" if isinstance(batch, tuple | list) else "")
        raise UsageError(f"score_loader batch {index} is a {kind}, not (inputs tensor, targets)",
                         "make the loader yield (inputs, targets) pairs, e.g. a DataLoader over a TensorDataset")
    return batch[0], batch[1]


def check_model_input(model: nn.Module, example_input: Any) -> tuple[int, int, int, int]:
    """The engine's input shape, after checking that ``model`` is a module that takes ``example_input``."""
    if not isinstance(model, nn.Module):
        raise UsageError(f"model is a {type(model).__name__}, not a torch.nn.Module", "pass the nn.Module itself")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input)
        raise UsageError(f"example_input must be a 4-D NCHW tensor, got {shape}",
                         "pass e.g. torch.randn(1, 3, 224, 224)")
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if model.training and has_bn and example_input.shape[0] == 1:
        raise UsageError("the model is in training mode, has BatchNorm and example_input has batch 1 (BatchNorm "
                         "cannot normalise one sample, and tracing would overwrite its statistics)",
                         "call model.eval() first")
    probe = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            probe(example_input)
    except Exception as err:  # whatever the user's forward raises on a wrong shape or dtype
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"the model cannot take example_input of shape {tuple(example_input.shape)} ({first})",
                         "pass a tensor shaped like one batch of the model's input") from None
    return tuple(int(d) for d in example_input.shape)  # type: ignore[return-value]


def check_finetuned(result: Any, widths_before: dict[str, tuple[int, int]],
                    widths_of: Callable[[nn.Module], dict[str, tuple[int, int]]]) -> nn.Module:
    """What ``finetune`` returned, if it is a module with the pruned layer widths it was given."""
    if not isinstance(result, nn.Module):
        raise UsageError(f"finetune returned a {type(result).__name__}, not an nn.Module",
                         "return the (trained) model from finetune(model)")
    try:
        after = widths_of(result)
    except (AttributeError, TypeError) as err:
        raise UsageError(f"finetune returned a module without the pruned layers ({err})",
                         "train the model you are given and return it, unwrapped") from None
    changed = sorted(k for k in widths_before if after.get(k) != widths_before[k])
    if changed:
        raise UsageError(f"finetune changed the widths of {len(changed)} layer(s), e.g. {changed[0]} "
                         f"{widths_before[changed[0]]} -> {after[changed[0]]}",
                         "finetune must train the pruned model, not replace or re-prune its layers")
    return result


def builtin_finetune(inputs: ModelInputs, epochs: int, lr: float) -> Finetune:
    """The built-in recipe for user objects: ``epochs`` passes of SGD (momentum 0.9) over ``score_loader``
    with ``loss_fn``. (``itcp-deploy run`` trains on its data spec with :func:`itcp_deploy.train.train`.)"""

    def finetune(model: nn.Module) -> nn.Module:
        optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        loss_fn = inputs.loss_fn or nn.functional.cross_entropy
        model.train()
        for _ in range(epochs):
            for x, y in _iter_checked(inputs.score_loader):
                optimiser.zero_grad()
                loss_fn(model(x), y).backward()  # type: ignore[no-untyped-call]  # torch leaves backward() unannotated
                optimiser.step()
        return model.eval()

    return finetune


def _iter_checked(loader: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    for i, batch in enumerate(loader):
        yield _checked_batch(batch, i)
