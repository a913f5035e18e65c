"""Channel importance: which channels of a group to keep (registry ``IMPORTANCE``).

Every criterion returns one non-negative value per channel of a group, indexed like the output channels of
the group's root layer (the layer the group is named after), summed over every coupled parameter of the group
(producers' output filters, BatchNorm, consumers' input slices), so it ranks channels of the same group.

- ``l1`` / ``l2``: group L1 / squared-L2 norm of the coupled weights (TP ``GroupMagnitudeImportance``). Free.
- ``bn_scale``: summed |gamma| of the group's BatchNorms (TP ``BNScaleImportance``); falls back to ``l1`` for
  groups without BatchNorm. Free.
- ``taylor``: first-order Taylor estimate of the loss change from removing the channel,
  ``sum over coupled parameter tensors of |sum over the channel's slice of w * dL/dw|``, with gradients of the
  mean loss (cross-entropy unless a ``loss_fn`` is given) summed over ``num_batches`` batches of ``loader`` in
  eval mode (BN statistics fixed, as deployed), divided by ``num_batches``. In loss units, so comparable
  across groups. Costs ``num_batches`` forward+backward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch.utils._pytree import tree_leaves

from itcp_deploy.errors import ItcpError, UsageError, is_out_of_memory
from itcp_deploy.registry import Registry

Batch = tuple[torch.Tensor, torch.Tensor]
#: ``loss_fn(outputs, targets)`` -> scalar tensor: the user's loss (detection, dense prediction, ...).
LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass(frozen=True)
class Criterion:
    """A channel-importance criterion: ``fn(tp_group, width)`` -> per-channel numpy vector."""

    fn: Callable[[tp.dependency.Group, int], np.ndarray | None]
    needs_gradients: bool = False


IMPORTANCE: Registry[Criterion] = Registry("importance criterion")


def _tp(criterion: tp.importance.Importance) -> Callable[[tp.dependency.Group, int], np.ndarray | None]:
    def fn(group: tp.dependency.Group, width: int) -> np.ndarray | None:
        imp = criterion(group)
        return None if imp is None else imp.detach().double().cpu().numpy()
    return fn


def _slice_taylor(w: torch.Tensor, g: torch.Tensor, dim: int) -> torch.Tensor:
    """Per channel along ``dim``: sum of w * grad over the rest of the tensor."""
    return (w * g).transpose(0, dim).flatten(1).sum(1) if w.dim() > 1 else w * g


def _taylor(group: tp.dependency.Group, width: int) -> np.ndarray:
    total = torch.zeros(width, dtype=torch.float64)
    for item in group:
        layer, fn, idxs, roots = item.dep.target.module, item.dep.handler, item.idxs, item.root_idxs
        if not isinstance(layer, nn.Module) or any(r is None for r in roots):
            continue
        out_side = fn in (tp.prune_conv_out_channels, tp.prune_linear_out_channels,
                          tp.prune_depthwise_conv_out_channels, tp.prune_batchnorm_out_channels)
        in_side = fn in (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
        if not (out_side or in_side):
            continue
        per_channel = None
        for name in ("weight", "bias") if out_side else ("weight",):
            p = getattr(layer, name, None)
            if p is None or p.grad is None:
                continue
            transposed = getattr(layer, "transposed", False)
            dim = (1 if transposed else 0) if out_side else (0 if transposed else 1)
            s = _slice_taylor(p.detach(), p.grad.detach(), dim).double()
            if in_side and isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1:
                s = s.repeat(layer.groups)
            per_channel = s if per_channel is None else per_channel + s
        if per_channel is not None:
            total.scatter_add_(0, torch.tensor(roots), per_channel[idxs].abs())
    return total.numpy()


IMPORTANCE.add("l1", Criterion(_tp(tp.importance.GroupMagnitudeImportance(p=1, group_reduction="sum",
                                                                          normalizer=None))))
IMPORTANCE.add("l2", Criterion(_tp(tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum",
                                                                          normalizer=None))))
IMPORTANCE.add("bn_scale", Criterion(_tp(tp.importance.BNScaleImportance(group_reduction="sum",
                                                                         normalizer=None))))
IMPORTANCE.add("taylor", Criterion(_taylor, needs_gradients=True))


def accumulate_gradients(model: nn.Module, batches: Iterable[Batch], num_batches: int,
                         loss_fn: LossFn | None = None) -> int:
    """Sum the gradients of the loss (``loss_fn(model(x), y)``, the mean cross-entropy by default) over up to
    ``num_batches`` batches into ``.grad``, scaled to a per-batch mean, in eval mode. Every parameter gets a
    gradient (fixed layers too). A batch is taken :func:`images_per_pass` images at a time, each part's loss
    weighted by its share (the same gradient for a mean loss); one that still runs out of memory (MaxViT at 224:
    16 images' activations) is taken in halves, and later batches start at the size that fitted. Returns
    batches."""
    training = model.training
    model.eval()
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    seen, fits = 0, None  # fits: the most images a pass may take (lowered when a pass ran out of memory)
    with torch.enable_grad():
        for x, y in batches:
            if seen >= num_batches:
                break
            sliceable = _sliceable(x, y)
            if sliceable:  # a batch that cannot be split goes in one pass: no probe for its bound
                fits = fits or images_per_pass(model, x)
            step = min(fits, len(x)) if sliceable and fits else len(x)
            for start in range(0, len(x), step):
                part = slice(start, start + step)
                batch = (x[part], y[part]) if step < len(x) else (x, y)
                took = _add_gradient(model, params, batch, loss_fn, len(batch[0]) / len(x))
                fits = took if took < len(batch[0]) else fits
            seen += 1
    model.train(training)
    if seen == 0:
        raise UsageError("the loader for the taylor criterion yielded no batch", "pass a non-empty data set")
    for p in params:
        if p.grad is not None:
            p.grad /= seen
    return seen


#: oneDNN's error when it cannot allocate a kernel's buffers (maxvit_t's GELU at 16 images, near the zoo sweep's
#: memory cap); another cause of it fails again on the halves, and on one image is raised as it is
_ONEDNN_NO_MEMORY = "could not create a primitive"


#: the activations one gradient pass may hold, and how many copies of its forward outputs a pass holds at its
#: peak (those saved for backward, the gradients flowing back, the allocator's slack: a rough bound). RetinaNet at
#: 512 took its 64 score images in one pass: 19.5 GB, and Linux's OOM killer ended the run before torch could
#: report an allocation failing, so the halving above never ran
PASS_BYTES = 1 << 31
ACTIVATION_COPIES = 3


def images_per_pass(model: nn.Module, x: Any) -> int:
    """How many images of ``x`` one gradient pass may take: :data:`PASS_BYTES` over one image's forward outputs
    (every leaf module's, one forward without gradients) x :data:`ACTIVATION_COPIES`; at least 1. ``len(x)``
    when that one image does not fit either: the gradient pass reports it."""
    outputs = 0

    def count(_module: nn.Module, _inputs: Any, out: Any) -> None:
        nonlocal outputs
        outputs += sum(t.numel() * t.element_size() for t in _tensors(out))

    hooks = [m.register_forward_hook(count) for m in model.modules() if next(m.children(), None) is None]
    try:
        with torch.no_grad():
            model(x[:1])
    except RuntimeError as err:
        if not (is_out_of_memory(err) or _ONEDNN_NO_MEMORY in str(err)):
            raise
        return len(x)
    finally:
        for hook in hooks:
            hook.remove()
    return max(1, PASS_BYTES // max(1, outputs * ACTIVATION_COPIES))


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a module's output (a tensor, or tuples, lists and dicts of them)."""
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def _sliceable(x: Any, y: Any) -> bool:
    """Whether a batch can be taken in parts: one target per image (class labels, or a detector's box dicts)."""
    return isinstance(y, (torch.Tensor, list, tuple)) and len(y) == len(x)


def computes_own_loss(model: nn.Module) -> bool:
    """Whether ``model(x, targets)`` returns its own loss dict (a torchvision detector's training losses)."""
    return bool(getattr(model, "loss_from_targets", False))


def batch_loss(model: nn.Module, x: Any, y: Any, loss_fn: LossFn | None) -> torch.Tensor:
    """``loss_fn(model(x), y)``; without ``loss_fn``, the sum of the loss dict of a model that computes its own
    (:func:`computes_own_loss`), else cross-entropy."""
    if loss_fn is None and computes_own_loss(model):
        return sum(model(x, y).values())
    if loss_fn is None and not isinstance(y, torch.Tensor):  # e.g. detection boxes given to a classifier
        raise UsageError(f"the batches' targets are a {type(y).__name__}, not class labels, and the model computes "
                         "no loss from them", "give class-label data, or a loss_fn for these targets")
    return (loss_fn or nn.functional.cross_entropy)(model(x), y)


def _add_gradient(model: nn.Module, params: list[nn.Parameter], batch: Batch, loss_fn: LossFn | None,
                  weight: float) -> int:
    """Add ``weight`` x the batch's loss gradient into ``.grad``; halve the batch when it runs out of memory.
    Returns the size its passes were cut to (``len(x)`` when none was).

    ``autograd.grad`` returns every gradient only once the backward pass has finished, so a pass that fails
    half way has added nothing; the halves run after the failed pass's tensors are released."""
    x, y = batch
    try:
        grads = torch.autograd.grad(batch_loss(model, x, y, loss_fn) * weight, params, allow_unused=True)
    except RuntimeError as err:  # torch's CPU allocator raises RuntimeError ("can't allocate memory")
        splittable = len(x) > 1 and _sliceable(x, y)
        if not (is_out_of_memory(err) or (splittable and _ONEDNN_NO_MEMORY in str(err))):
            raise
        if not splittable:
            raise ItcpError(f"the taylor gradients ran out of memory on a batch of {len(x)} at input "
                            f"{'x'.join(map(str, x.shape[1:]))}",
                            "free memory, use a smaller input, or score without gradients (--criterion magnitude)"
                            ) from None
        grads = None
    if grads is None:
        half = len(x) // 2
        return min(_add_gradient(model, params, (x[part], y[part]), loss_fn, weight * len(x[part]) / len(x))
                   for part in (slice(0, half), slice(half, None)))
    for p, g in zip(params, grads, strict=True):
        if g is not None:
            p.grad = g if p.grad is None else p.grad.add_(g)
    return len(x)


def group_importance(graph: tp.DependencyGraph, model: nn.Module, root: str, width: int,
                     criterion: str) -> np.ndarray:
    """Importance of every channel of the group rooted at layer ``root`` (gradients already accumulated)."""
    from itcp_deploy.pruning.tracing import root_group

    group = root_group(graph, model, root, list(range(width)))
    imp = IMPORTANCE.get(criterion).fn(group, width)
    if imp is None:  # e.g. bn_scale on a group without BatchNorm
        imp = IMPORTANCE.get("l1").fn(group, width)
    return np.nan_to_num(np.asarray(imp, dtype=np.float64), nan=0.0)
