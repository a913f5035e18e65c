"""Build the :class:`~itcp_deploy.space.PruningSpace` of a model from Torch-Pruning's dependency graph.

Channels coupled by residual adds, depthwise convs, concatenation or BatchNorm form one group (TP's
``get_all_groups``). Each group is named after the first Conv/Linear, in module order, whose output channels
it sets, so names are stable across runs. The network's input channels form the fixed group ``input``;
channels that no layer reads (the logits) form the fixed group ``output``. A layer that reads a concatenation
of several groups reads one fixed group ``LAYER:in`` instead, and the concatenated groups keep their width
(see :func:`_layer_groups`).

Example (CIFAR ResNet-56 with converted shortcuts): 3 stage groups tied by residual adds (``conv1`` =
conv1 + layer1.*.conv2; ``layer2.0.conv2`` = layer2.*.conv2 + layer2.0.shortcut; ``layer3.0.conv2``), 27 inner
groups (one per block's conv1), plus ``input`` and ``output``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from itcp_deploy.collector import graphs_freed
from itcp_deploy.engines.device import channel_block
from itcp_deploy.errors import UsageError
from itcp_deploy.pruning.removal import removable_groups
from itcp_deploy.pruning.runnable import keep_unrunnable
from itcp_deploy.pruning.tracing import (
    PRUNABLE_LAYERS,
    TracedGroup,
    parameters_requiring_grad,
    trace,
    traced_groups,
    traced_layers,
)
from itcp_deploy.space import INPUT_GROUP, OUTPUT_GROUP, CandidateGrid, ChannelGroup, LayerSpec, PruningSpace


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[-1]))


def _padding(conv: nn.modules.conv._ConvNd) -> tuple[int, int]:
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        k, d = _pair(conv.kernel_size), _pair(conv.dilation)
        return (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
    return _pair(conv.padding)


def _hw(shape: torch.Size, linear: bool, batch: int) -> tuple[int, int]:
    """A conv's spatial size; a Linear's rows per sample (ConvNeXt's Linear layers run on (N, H, W, C), so they
    cost H x W times a classifier's at the same widths; a windowed attention's on (N x windows, tokens, C))."""
    if not linear:
        return (int(shape[-2]), int(shape[-1])) if len(shape) >= 4 else (1, 1)
    if len(shape) == 4 and shape[0] == batch:
        return (int(shape[1]), int(shape[2]))
    return (max(1, math.prod(shape) // (batch * int(shape[-1]))), 1)


def _record_sizes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, int], ...]]:
    """Input and output spatial size of every Conv/Linear that runs, from forward hooks."""
    sizes: dict[str, tuple[tuple[int, int], ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_LAYERS):
            def hook(m, inputs, output, name=name):
                linear, n = isinstance(m, nn.Linear), input_shape[0]
                sizes.setdefault(name, (_hw(inputs[0].shape, linear, n), _hw(output.shape, linear, n)))
            hooks.append(module.register_forward_hook(hook))
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(*input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(training)
    return sizes


def _constant_input_layers(model: nn.Module, input_shape: tuple[int, ...]) -> set[str]:
    """Conv/Linear layers whose input does not depend on the network's input (Swin V2's position-bias MLP
    reads a fixed coordinate table): Torch-Pruning's trace may miss them, and they keep their widths.
    Found by a forward in which only the input requires grad."""
    constant: set[str] = set()
    hooks = [module.register_forward_hook(lambda _m, inputs, _o, name=name: constant.add(name)
                                          if not inputs[0].requires_grad else None)
             for name, module in model.named_modules() if isinstance(module, PRUNABLE_LAYERS)]
    try:
        with parameters_requiring_grad(model, False):
            model.eval()
            model(torch.zeros(*input_shape, requires_grad=True))
    finally:
        for h in hooks:
            h.remove()
    return constant


def _channel_group(g: TracedGroup, name: str, grid: CandidateGrid, fixed: bool) -> ChannelGroup:
    multiple = math.lcm(*g.conv_groups) if g.conv_groups else 1
    candidates = (g.width,) if fixed else grid.candidates(g.width, multiple)
    return ChannelGroup(name=name, full_width=g.width, candidates=candidates, layers_out=g.layers_out,
                        layers_in=g.layers_in, fixed=fixed)


def _layer_spec(name: str, module: nn.Module, in_group: str, out_group: str,
                sizes: tuple[tuple[int, int], ...]) -> LayerSpec:
    if isinstance(module, nn.Linear):
        return LayerSpec(name=name, op="linear", in_group=in_group, out_group=out_group,
                         in_channels=module.in_features, out_channels=module.out_features, in_hw=sizes[0],
                         out_hw=sizes[1])
    return LayerSpec(name=name, op="conv", in_group=in_group, out_group=out_group,
                     in_channels=module.in_channels, out_channels=module.out_channels,
                     kernel=_pair(module.kernel_size), stride=_pair(module.stride),
                     padding=_padding(module),
                     groups=module.groups, in_hw=sizes[0], out_hw=sizes[1])


def _untraced(model_spec: str, layer: str, problem: str) -> UsageError:
    return UsageError(f"Torch-Pruning could not trace {model_spec}: layer {layer} {problem}",
                      "make forward() a plain tensor pipeline (no torch.no_grad(), .item(), .data or "
                      "in-place tricks) and flatten only 1x1 feature maps into Linear layers")


def _check_widths(model_spec: str, groups: list[ChannelGroup], layers: list[LayerSpec]) -> None:
    """Every layer's channels must equal its groups' widths, or the space would misdescribe the model."""
    width = {g.name: g.full_width for g in groups}
    for layer in layers:
        reads = sum(width[g] for g in layer.in_group.split("+"))
        if reads != layer.in_channels or width[layer.out_group] != layer.out_channels:
            raise _untraced(model_spec, layer.name, f"has {layer.in_channels}->{layer.out_channels} channels "
                            f"but its groups give {reads}->{width[layer.out_group]}")


def ignored_layer_names(model: nn.Module, patterns: Sequence[str], model_spec: str = "custom") -> set[str]:
    """Conv/Linear layers matched by ``--ignore-layers`` glob patterns (on the layer's name or a parent's).

    Raises:
        UsageError: a pattern matches no Conv/Linear layer (names the pattern and where to see the names).
    """
    layers = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_LAYERS)]
    found: set[str] = set()
    for pattern in patterns:
        hits = {n for n in layers if any(fnmatch.fnmatchcase(p, pattern) for p in _self_and_parents(n))}
        if not hits:
            raise UsageError(f"--ignore-layers {pattern!r} matches no Conv/Linear layer of {model_spec}",
                             f"see the layer names with `itcp-deploy groups {model_spec} --input-shape ...`")
        found |= hits
    return found


def _self_and_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _space_groups(traced: list[TracedGroup], shape: tuple[int, ...], grid: CandidateGrid,
                  ignored: set[str]) -> list[ChannelGroup]:
    """``input``, then one group per traced group: ``output`` (no reader) and ignored ones are fixed."""
    outputs = [g for g in traced if not g.layers_in]
    names = {id(g): (OUTPUT_GROUP if i == 0 else f"{OUTPUT_GROUP}:{g.root}") for i, g in enumerate(outputs)}
    groups = [ChannelGroup(name=INPUT_GROUP, full_width=shape[1], candidates=(shape[1],), fixed=True)]
    groups += [_channel_group(g, names.get(id(g), g.root), grid,
                              fixed=id(g) in names or bool(ignored & set(g.layers_out))) for g in traced]
    return groups


def _layer_groups(model: nn.Module, traced: list[TracedGroup], groups: list[ChannelGroup],
                  sizes: dict) -> tuple[list[LayerSpec], list[ChannelGroup]]:
    """Each run layer's in/out groups, and the groups with those made fixed that this needs.

    Channels in no group (they pass a channel shuffle, see :mod:`~itcp_deploy.pruning.channel_views`) get
    fixed groups of their own: ``LAYER`` for a layer's output, ``LAYER:in`` for its input. A layer
    reading a concatenation of several groups (DenseNet, Inception, SqueezeNet's fire modules) would make its
    latency a function of three or more widths, which the pairwise perf model and DP do not represent: the
    concatenated groups keep their width and the layer reads one fixed group ``LAYER:in``. The layers inside
    each branch (DenseNet's bottlenecks, Inception's reductions) stay prunable. A layer whose output width
    differs from its traced group's (a split chunk added back to a conv's output, Res2Net's hierarchical
    split, DPN's dual path) writes a fixed group ``LAYER``, and every group it touches keeps its width:
    Torch-Pruning's index mapping there is not to be trusted."""
    out_group: dict[str, str] = {}
    in_groups: dict[str, list[tuple[int, str]]] = {}
    for g, cg in zip(traced, groups[1:], strict=True):
        for layer in g.layers_out:
            out_group.setdefault(layer, cg.name)
        for layer in g.layers_in:
            in_groups.setdefault(layer, []).append((g.in_offsets.get(layer, 0), cg.name))
    width = {g.name: g.full_width for g in groups}
    layers, extra, concatenated = [], [], set()
    for name, module in model.named_modules():
        if name not in sizes:
            continue
        spec = _layer_spec(name, module, "", "", sizes[name])
        reads = list(dict.fromkeys(n for _, n in sorted(in_groups.get(name, []))))
        if not reads and spec.in_channels == width[INPUT_GROUP]:
            reads = [INPUT_GROUP]
        if name in out_group and width[out_group[name]] != spec.out_channels:
            concatenated |= {out_group.pop(name), *reads}  # the trace misread this layer: nothing it touches moves
        if name not in out_group:
            extra.append(_fixed(name, spec.out_channels))
            out_group[name] = name
        if len(reads) != 1 or width[reads[0]] != spec.in_channels:
            concatenated |= set(reads)
            extra.append(_fixed(f"{name}:in", spec.in_channels))
            reads = [f"{name}:in"]
        layers.append(replace(spec, in_group="+".join(reads), out_group=out_group[name]))
    kept = [replace(g, candidates=(g.full_width,), fixed=True) if g.name in concatenated else g for g in groups]
    return layers, kept + extra


def _fixed(name: str, width: int) -> ChannelGroup:
    return ChannelGroup(name=name, full_width=width, candidates=(width,), fixed=True)


def _traced_space(model: nn.Module, shape: tuple[int, ...], model_spec: str, grid: CandidateGrid,
                  ignored: set[str], ignore_layers: tuple[str, ...]) -> tuple[PruningSpace, set[str]]:
    """The space TP's trace of ``model`` gives, and its removable groups (the graph dies on return)."""
    graph = trace(model, shape, model_spec)
    sizes = _record_sizes(model, shape)
    traced = traced_groups(graph, model)
    if not traced:
        raise UsageError(f"{model_spec} has no Conv or Linear layer Torch-Pruning can prune",
                         "pass a CNN whose layers are torch.nn.Conv2d / torch.nn.Linear modules")
    seen = traced_layers(graph)
    missing = [name for name, module in model.named_modules() if name in sizes and module not in seen]
    constant = _constant_input_layers(model, shape) if missing else set()
    for name in missing:
        if name not in constant:  # a constant-input layer (position-bias MLP) keeps its widths; others refuse
            raise _untraced(model_spec, name, "is missing from Torch-Pruning's graph")
    layers, groups = _layer_groups(model, traced, _space_groups(traced, shape, grid, ignored), sizes)
    _check_widths(model_spec, groups, layers)
    space = PruningSpace(model=model_spec, input_shape=shape, groups=tuple(groups), layers=tuple(layers),
                         grid=grid, ignore_layers=ignore_layers)
    return space, removable_groups(graph, model, space)


def build_space(model: nn.Module, input_shape: tuple[int, int, int, int], *, model_spec: str = "custom",
                grid: CandidateGrid | None = None, ignore_layers: Sequence[str] = ()) -> PruningSpace:
    """Find the channel groups of ``model`` and the groups setting each Conv/Linear layer's widths.

    Args:
        model: The network; left unchanged (TP's trace switches it to eval mode; the mode is restored).
        input_shape: ``(N, C, H, W)`` at which layers are traced and spatial sizes recorded.
        model_spec: What :func:`itcp_deploy.models.create_model` rebuilds it from; stored in the space.
        grid: How candidate widths are drawn. Defaults to ``CandidateGrid()`` (every 4 up to 64, then 8)
            aligned to this machine's channel block (``engines.device.channel_block``), so the top of every
            latency step is a candidate (a no-op on x86: blocks of 16 with AVX-512, 8 with AVX2).
        ignore_layers: Glob patterns of layers whose output channels must keep their width (a detection
            head, say): every group setting such a layer's output is fixed, as Torch-Pruning's
            ``ignored_layers`` does. A pattern also matches the layers inside a matched module.

    Returns:
        The pruning space: groups (``input`` and ``output`` fixed), candidates, one LayerSpec per layer run;
        residual branches' inner groups marked ``removable`` (width 0 is a candidate only after
        :meth:`~itcp_deploy.space.PruningSpace.with_removal`). Groups the model's forward cannot run pruned
        are fixed (:mod:`~itcp_deploy.pruning.runnable`).

    Raises:
        UsageError: TP cannot trace the model, it has no prunable Conv/Linear layer, or an ignore pattern
            matches no layer.
    """
    grid = grid or CandidateGrid().aligned_to(channel_block())
    shape = tuple(int(d) for d in input_shape)
    ignored = ignored_layer_names(model, ignore_layers, model_spec)
    with graphs_freed():  # the trace's saved activations go before keep_unrunnable's pruned forwards
        space, removable = _traced_space(model, shape, model_spec, grid, ignored, tuple(ignore_layers))
    space = replace(space, groups=tuple(replace(g, removable=g.name in removable) for g in space.groups))
    return keep_unrunnable(model, space)


def build_space_from_spec(spec: str, input_shape: tuple[int, int, int, int], *,
                          num_classes: int | None = None, weights: str | None = None,
                          trust_code: bool = False, grid: CandidateGrid | None = None,
                          ignore_layers: Sequence[str] = ()) -> PruningSpace:
    """:func:`build_space` of ``create_model(spec, ...)`` (what ``itcp-deploy groups`` shows)."""
    from itcp_deploy.models import create_model

    model = create_model(spec, num_classes=num_classes, weights=weights, trust_code=trust_code)
    return build_space(model, input_shape, model_spec=spec, grid=grid, ignore_layers=ignore_layers)
