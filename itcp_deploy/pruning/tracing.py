"""Torch-Pruning's dependency graph, built safely, and its groups read as plain names.

Torch-Pruning (TP) traces autograd, so it needs gradients enabled and parameters that require grad: a fixed
layer (``requires_grad=False``, like the converted option-A shortcut of CIFAR ResNets) would otherwise vanish
from the graph and not be pruned with its group. :func:`trace` turns ``requires_grad`` on for the trace and
restores it (and the train/eval mode TP changes) afterwards. A model with a ``network_only()`` context (a
detector, :class:`~itcp_deploy.models.detection.TensorDetector`) is traced within it.
:func:`restore_requires_grad` puts the flags back after TP replaced pruned parameters with fresh ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from itcp_deploy.errors import UsageError
from itcp_deploy.pruning.channel_views import crosses_channel_view, record_channel_views

PRUNABLE_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class TracedGroup:
    """One TP group read as names: the layers whose output channels it sets and those that read them.

    ``in_offsets`` gives, for each reading layer, the first of its input channels that belongs to the group
    (non-zero after a concatenation), so a layer reading several groups can list them in order.
    """

    root: str
    width: int
    layers_out: tuple[str, ...]
    layers_in: tuple[str, ...]
    in_offsets: dict[str, int]
    conv_groups: tuple[int, ...]  # ``groups`` of every grouped, non-depthwise conv and GroupNorm on the channels


@contextlib.contextmanager
def parameters_requiring_grad(model: nn.Module, requires_grad: bool) -> Iterator[None]:
    """Every parameter's ``requires_grad`` set to ``requires_grad`` under ``torch.enable_grad()``; the flags and
    the train/eval mode are restored on exit (TP's trace and forwards inside may change both)."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(requires_grad)
        with torch.enable_grad():
            yield
    finally:
        restore_requires_grad(model, flags)
        model.train(training)


def restore_requires_grad(model: nn.Module, flags: dict[str, bool]) -> None:
    """Set each parameter's ``requires_grad`` back to ``flags[name]`` (TP's new parameters require grad)."""
    for name, p in model.named_parameters():
        if name in flags:
            p.requires_grad_(flags[name])


def trace(model: nn.Module, input_shape: tuple[int, ...], model_name: str) -> tp.DependencyGraph:
    """TP's dependency graph of ``model`` at ``input_shape``; a one-line :class:`UsageError` on failure."""
    example = torch.zeros(*input_shape)
    try:
        graph = tp.DependencyGraph()
        with parameters_requiring_grad(model, True), record_channel_views(graph), network_only(model):
            graph.build_dependency(model, example_inputs=example, verbose=False)
    except Exception as err:  # TP and the model's forward raise anything; the user needs one line
        detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise UsageError(
            f"Torch-Pruning could not trace {model_name} at input shape {'x'.join(map(str, input_shape))} "
            f"({type(err).__name__}: {detail})",
            "check --input-shape matches the model, and make forward() take one image tensor and return "
            "logits without torch.no_grad(), .item() or data-dependent Python control flow",
        ) from None
    return graph


def network_only(model: nn.Module) -> contextlib.AbstractContextManager:
    """The model's ``network_only()`` context, where it has one (a detector: forward returns its raw head
    outputs, without the box decoding and NMS that hold no channels), else nothing."""
    network_only = getattr(model, "network_only", None)
    return network_only() if callable(network_only) else contextlib.nullcontext()


def traced_layers(graph: tp.DependencyGraph) -> set[nn.Module]:
    """The modules TP's trace saw (a layer run under ``torch.no_grad()`` is missing)."""
    return set(graph.module2node)


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.out_channels > 1 \
        and module.groups == module.in_channels


def traced_groups(graph: tp.DependencyGraph, model: nn.Module) -> list[TracedGroup]:
    """Every channel group TP finds, rooted at the first Conv/Linear (in module order) that sets it.

    Groups whose channels pass through a channel-splitting view (channel shuffle, see
    :mod:`~itcp_deploy.pruning.channel_views`) are left out: their layers keep their widths.
    """
    order = {m: i for i, (_, m) in enumerate(model.named_modules())}
    names = {m: n for n, m in model.named_modules()}
    found: list[TracedGroup] = []
    seen: set[nn.Module] = set()
    for group in graph.get_all_groups(root_module_types=PRUNABLE_LAYERS):
        outs, ins, offsets, conv_groups = set(), set(), {}, set()
        for item in group:
            dep, idxs = item.dep, item.idxs
            module = dep.target.module
            if isinstance(module, nn.GroupNorm) and module.num_groups > 1:
                conv_groups.add(module.num_groups)  # TP keeps num_groups: widths must stay multiples of it
            if not isinstance(module, PRUNABLE_LAYERS) or module not in names:
                continue
            if graph.is_out_channel_pruning_fn(dep.handler):
                outs.add(module)
            if graph.is_in_channel_pruning_fn(dep.handler):
                ins.add(module)
                offsets[names[module]] = min(int(i) for i in idxs)
            if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 \
                    and not _is_depthwise(module):
                conv_groups.add(module.groups)
        if not outs or outs & seen or crosses_channel_view(graph, group):
            continue
        seen |= outs
        root = min(outs, key=order.__getitem__)
        found.append(TracedGroup(
            root=names[root],
            width=int(graph.get_out_channels(root)),
            layers_out=tuple(names[m] for m in sorted(outs, key=order.__getitem__)),
            layers_in=tuple(names[m] for m in sorted(ins, key=order.__getitem__)),
            in_offsets=offsets,
            conv_groups=tuple(sorted(conv_groups)),
        ))
    return sorted(found, key=lambda g: order[model.get_submodule(g.root)])


def root_group(graph: tp.DependencyGraph, model: nn.Module, root: str,
               idxs: list[int]) -> tp.dependency.Group:
    """TP's group of channels ``idxs`` of the layer named ``root`` (output side)."""
    module = model.get_submodule(root)
    return graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels, idxs)
