"""Apply a width plan: a physically smaller deep copy of the model, pruned with Torch-Pruning.

One dependency graph is traced per call (on the copy); channel importance is computed on the unpruned copy for
every group that shrinks, then all groups are cut in one pass, by index, so the result does not depend on group
order.
Groups touching a grouped (non-depthwise) conv keep the same positions inside each conv group, so the conv
stays valid. The original model is untouched.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from itcp_deploy.collector import graphs_freed
from itcp_deploy.errors import InputFileError, UsageError
from itcp_deploy.models.copying import own_tensors, sharing_copy
from itcp_deploy.pruning.importance import (
    IMPORTANCE,
    Batch,
    LossFn,
    accumulate_gradients,
    group_importance,
)
from itcp_deploy.pruning.removal import is_removed, remove_branches
from itcp_deploy.pruning.tracing import restore_requires_grad, root_group, trace
from itcp_deploy.space import ChannelGroup, PruningSpace

DEFAULT_GRADIENT_BATCHES = 4


def conv_multiple(model: nn.Module, group: ChannelGroup) -> int:
    """Channel-count multiple a group must keep: the lcm of ``groups`` of grouped, non-depthwise convs."""
    multiple = 1
    for name in set(group.layers_in) | set(group.layers_out):
        m = model.get_submodule(name)
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not (m.groups == m.in_channels
                                                                              == m.out_channels):
            multiple = math.lcm(multiple, m.groups)
    return multiple


def keep_indices(importance: np.ndarray, width: int, multiple_of: int = 1) -> np.ndarray:
    """Sorted indices of the ``width`` most important channels (ties: lower index first).

    With ``multiple_of`` > 1 the channels split into that many equal blocks and the same positions are kept in
    every block, ranked by importance summed over blocks.
    """
    imp = np.asarray(importance, dtype=np.float64)
    if multiple_of > 1:
        position = imp.reshape(multiple_of, -1).sum(0)
        keep = np.sort(np.argsort(-position, kind="stable")[: width // multiple_of])
        block = imp.size // multiple_of
        return np.sort((np.arange(multiple_of)[:, None] * block + keep[None, :]).ravel())
    return np.sort(np.argsort(-imp, kind="stable")[:width])


def _importances(graph: tp.DependencyGraph, model: nn.Module, groups: list[ChannelGroup], criterion: str,
                 loader: Iterable[Batch] | None, num_batches: int = DEFAULT_GRADIENT_BATCHES,
                 loss_fn: LossFn | None = None) -> dict[str, np.ndarray]:
    if IMPORTANCE.get(criterion).needs_gradients:
        if loader is None:
            raise UsageError(f"the {criterion!r} importance needs data for gradients",
                             "pass a loader (--data) or use importance 'l1'")
        accumulate_gradients(model, loader, num_batches, loss_fn)
    return {g.name: group_importance(graph, model, g.name, g.full_width, criterion) for g in groups}


def channel_importance(model: nn.Module, space: PruningSpace, importance: str = "l1", *,
                       loader: Iterable[Batch] | None = None,
                       num_batches: int = DEFAULT_GRADIENT_BATCHES,
                       loss_fn: LossFn | None = None) -> dict[str, np.ndarray]:
    """Per-channel importance of every prunable group (see :mod:`itcp_deploy.pruning.importance`).

    Args:
        model: The unpruned network (left untouched; gradients are taken on a copy).
        space: Its pruning space.
        importance: A name in ``IMPORTANCE``. Defaults to ``l1``.
        loader: ``(images, labels)`` batches; needed by ``taylor``.
        num_batches: How many batches of ``loader`` the gradients average over. Defaults to 4.
        loss_fn: ``loss_fn(outputs, targets)`` for the gradients. Defaults to cross-entropy.

    Returns:
        Group name -> float64 vector of length ``full_width``, indexed like the root layer's output channels.
    """
    IMPORTANCE.get(importance)
    with graphs_freed():
        work = copy.deepcopy(model)
        graph = trace(work, space.input_shape, space.model)
        try:
            return _importances(graph, work, list(space.prunable), importance, loader, num_batches, loss_fn)
        finally:
            del graph, work


def apply_widths(model: nn.Module, space: PruningSpace, widths: Mapping[str, int], *,
                 importance: str | Mapping[str, np.ndarray] = "l1",
                 loader: Iterable[Batch] | None = None, loss_fn: LossFn | None = None,
                 inplace: bool = False) -> nn.Module:
    """A deep copy of ``model`` (``model`` itself if ``inplace``) with each group cut to its planned width,
    keeping the most important channels.

    Args:
        model: The unpruned network the space was built from (left untouched).
        space: Its pruning space.
        widths: Group name -> kept width (a candidate); missing groups stay at full width; width 0 (a
            candidate of a removable group, :mod:`~itcp_deploy.pruning.removal`) removes its residual branch.
        importance: A criterion name in ``IMPORTANCE``, or precomputed vectors from :func:`channel_importance`
            (fast path when many plans are applied to one model). Defaults to ``l1``.
        loader: ``(images, labels)`` batches for gradient-based criteria (``taylor``).
        loss_fn: the loss those gradients are of. Defaults to cross-entropy.
        inplace: prune ``model`` itself (Torch-Pruning's way) instead of a copy.

    Returns:
        The pruned copy, in the same train/eval mode, with every parameter's ``requires_grad`` as before.

    Raises:
        UsageError: Unknown group, or a width that is not one of the group's candidates.
        UnknownNameError: Unknown importance criterion.
    """
    plan = space.complete(widths)
    targets = [g for g in space.prunable if plan[g.name] < g.full_width]
    gradients = isinstance(importance, str) and IMPORTANCE.get(importance).needs_gradients
    if not targets:
        return model if inplace else copy.deepcopy(model)
    # gradients land in .grad, so they need a copy of their own; any other copy shares the caller's tensors
    # until pruning replaces them, and owns the rest at the end (memory: the pruned size, not a full copy)
    shared = not inplace and not gradients
    pruned = model if inplace else sharing_copy(model) if shared else copy.deepcopy(model)
    flags = {name: p.requires_grad for name, p in pruned.named_parameters()}
    with graphs_freed():
        graph = trace(pruned, space.input_shape, space.model)
        try:
            scores = (_importances(graph, pruned, targets, importance, loader, loss_fn=loss_fn)
                      if isinstance(importance, str) else importance)
            drops = {g.name: _dropped(g, scores.get(g.name), plan[g.name], conv_multiple(model, g))
                     for g in targets}
            _prune(_merged(graph, [root_group(graph, pruned, name, drop) for name, drop in drops.items()]))
        finally:
            del graph
    if shared:
        own_tensors(pruned, model)
    remove_branches(pruned, space, {g.name for g in targets if plan[g.name] == 0})
    restore_requires_grad(pruned, flags)
    for p in pruned.parameters():
        p.grad = None
    return pruned


def _channel_params(layer: nn.Module) -> list[str]:
    """A conv subclass's own parameters along its output channels (timm's ScaledStdConv2d ``gain``)."""
    if not isinstance(layer, nn.modules.conv._ConvNd) or type(layer).__module__.startswith("torch.nn"):
        return []
    return [n for n, p in layer.named_parameters(recurse=False)
            if n not in ("weight", "bias") and p.dim() > 0 and p.shape[0] == layer.out_channels]


def _dropped(group: ChannelGroup, importance: np.ndarray | None, width: int, multiple: int) -> list[int]:
    """The channels of ``group`` that a cut to ``width`` drops: the least important ones."""
    if importance is None or len(importance) != group.full_width:
        raise UsageError(f"no importance vector of length {group.full_width} for group {group.name!r}",
                         "compute it with channel_importance(model, space)")
    # width 0 removes the branch: Torch-Pruning keeps one channel, remove_branches drops the rest
    keep = set(keep_indices(importance, max(width, 1), multiple).tolist())
    return [i for i in range(group.full_width) if i not in keep]


def _merged(graph: tp.DependencyGraph, groups: list[tp.dependency.Group]) -> tp.dependency.Group:
    """One TP group that cuts every group's channels at once.

    Every group is read off the unpruned graph, so all indices share one coordinate system; each layer's
    pruning function then runs once, with the union of its indices (a layer after a concatenation gets each
    part's channels at that part's offset). Pruning group by group made TP remap every index of the graph
    before each next group (swin_s: ~460 reshapes a pass; its apply_widths ran out of the zoo sweep's CPU cap).
    """
    merged: dict[tuple[object, object], tuple[tp.dependency.Dependency, set[int]]] = {}
    for group in groups:
        for item in group:
            key = (item.dep.target, item.dep.handler)
            merged.setdefault(key, (item.dep, set()))[1].update(int(i) for i in item.idxs)
    out = tp.dependency.Group()
    out._DG = graph
    for dep, idxs in merged.values():
        out.add_dep(dep, sorted(idxs))
    return out


def _prune(group: tp.dependency.Group) -> None:
    """TP's ``group.prune()``, then the output-channel parameters of conv subclasses, which TP's conv pruner
    leaves at full width (the pruned forward would fail, and the group would stay unprunable)."""
    out_fns = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels)
    extra = []  # (layer, its extra parameters, dropped channels, full width), read before TP changes them
    for item in group:
        layer = item.dep.target.module
        params = _channel_params(layer) if item.dep.handler in out_fns else []
        if params:
            extra.append((layer, params, {int(i) for i in item.idxs}, int(layer.out_channels)))
    group.prune(record_history=False)
    for layer, params, drop, full in extra:
        keep = torch.tensor([i for i in range(full) if i not in drop])
        for name in params:
            p = getattr(layer, name)
            setattr(layer, name, nn.Parameter(p.data[keep].clone(), requires_grad=p.requires_grad))


def pruned_layer_widths(model: nn.Module, space: PruningSpace) -> dict[str, tuple[int, int]]:
    """Actual ``(in_channels, out_channels)`` of every layer of the space in ``model`` (for checks)."""
    out = {}
    for layer in space.layers:
        m = model.get_submodule(layer.name)
        out[layer.name] = ((m.in_features, m.out_features) if isinstance(m, nn.Linear)
                           else (0, m.out_channels) if is_removed(m) else (m.in_channels, m.out_channels))
    return out


def check_space_fits(model: nn.Module, space: PruningSpace) -> None:
    """Raise unless ``space`` was built from this architecture: the same conv/linear layers and channels.

    A space (or a perf model holding one) of another model would otherwise score and prune, by name,
    whichever layers happen to match, silently.

    Raises:
        InputFileError: a layer missing on either side, or one with other channel counts.
    """
    modules = _called_layers(model, space.input_shape)
    problems = [f"the model has layer {n}, the space does not"
                for n in sorted(set(modules) - {layer.name for layer in space.layers})]
    for layer in space.layers:
        m = modules.get(layer.name)
        if m is None:
            problems.append(f"the model has no layer {layer.name}")
            continue
        channels = (m.in_features, m.out_features) if isinstance(m, nn.Linear) else (m.in_channels,
                                                                                      m.out_channels)
        if channels != (layer.in_channels, layer.out_channels):
            expected = (layer.in_channels, layer.out_channels)
            problems.append(f"layer {layer.name} has (in, out) channels {channels}, the space {expected}")
    if problems:
        raise InputFileError(f"the pruning space of {space.model} does not fit this model ({problems[0]})",
                             "use the perf model (or profile) made for this model")


def _called_layers(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, nn.Module]:
    """The conv and linear modules one eval-mode forward pass calls (unused ones, e.g. aux heads, left out)."""
    import torch

    called: dict[str, nn.Module] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, _inputs: object, _output: object) -> None:
            called[name] = module
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in model.named_modules()
             if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape)))
    except (RuntimeError, ValueError) as err:  # e.g. channels or spatial size that the model cannot take
        raise InputFileError(f"the model does not run on the space's input shape {tuple(input_shape)} "
                             f"({str(err).splitlines()[0]})", "use the perf model made for this model") from err
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return called
