"""Build the :class:`~itcp_deploy.space.PruningSpace` of a model from Torch-Pruning's dependency graph.

Channels coupled by residual adds, depthwise convs, concatenation or BatchNorm form one group (TP's
``get_all_groups``). Each group is named after the first Conv/Linear, in module order, whose output channels
it sets, so names are stable across runs. The network's input channels form the fixed group ``input``;
channels that no layer reads (the logits) form the fixed group ``output``. A layer that reads a concatenation
of several groups lists them joined by ``+`` in ``in_group`` (in channel order).

Example (CIFAR ResNet-56 with converted shortcuts): 3 stage groups tied by residual adds (``conv1`` =
conv1 + layer1.*.conv2; ``layer2.0.conv2`` = layer2.*.conv2 + layer2.0.shortcut; ``layer3.0.conv2``), 27 inner
groups (one per block's conv1), plus ``input`` and ``output``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from itcp_deploy.engines.device import channel_block
from itcp_deploy.errors import UsageError
from itcp_deploy.pruning.tracing import PRUNABLE_LAYERS, TracedGroup, trace, traced_groups
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


def _hw(shape: torch.Size) -> tuple[int, int]:
    return (int(shape[-2]), int(shape[-1])) if len(shape) >= 4 else (1, 1)


def _record_sizes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, int], ...]]:
    """Input and output spatial size of every Conv/Linear that runs, from forward hooks."""
    sizes: dict[str, tuple[tuple[int, int], ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_LAYERS):
            def hook(_m, inputs, output, name=name):
                sizes.setdefault(name, (_hw(inputs[0].shape), _hw(output.shape)))
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


def _channel_group(g: TracedGroup, name: str, grid: CandidateGrid, fixed: bool) -> ChannelGroup:
    multiple = math.lcm(*g.conv_groups) if g.conv_groups else 1
    candidates = (g.width,) if fixed else grid.candidates(g.width, multiple)
    return ChannelGroup(name=name, full_width=g.width, candidates=candidates, layers_out=g.layers_out,
                        layers_in=g.layers_in, fixed=fixed)


def _layer_spec(name: str, module: nn.Module, in_group: str, out_group: str,
                sizes: tuple[tuple[int, int], ...]) -> LayerSpec:
    if isinstance(module, nn.Linear):
        return LayerSpec(name=name, op="linear", in_group=in_group, out_group=out_group,
                         in_channels=module.in_features, out_channels=module.out_features)
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


def build_space(model: nn.Module, input_shape: tuple[int, int, int, int], *, model_spec: str = "custom",
                grid: CandidateGrid | None = None) -> PruningSpace:
    """Find the channel groups of ``model`` and the groups setting each Conv/Linear layer's widths.

    Args:
        model: The network; left unchanged (TP's trace switches it to eval mode; the mode is restored).
        input_shape: ``(N, C, H, W)`` at which layers are traced and spatial sizes recorded.
        model_spec: What :func:`itcp_deploy.models.create_model` rebuilds it from; stored in the space.
        grid: How candidate widths are drawn. Defaults to ``CandidateGrid()`` (every 4 up to 64, then 8)
            aligned to this machine's channel block (``engines.device.channel_block``), so the top of every
            latency step is a candidate (a no-op on x86: blocks of 16 with AVX-512, 8 with AVX2).

    Returns:
        The pruning space: groups (``input`` and ``output`` fixed), candidates, one LayerSpec per layer run.

    Raises:
        UsageError: TP cannot trace the model, or it has no prunable Conv/Linear layer.
    """
    grid = grid or CandidateGrid().aligned_to(channel_block())
    shape = tuple(int(d) for d in input_shape)
    graph = trace(model, shape, model_spec)
    sizes = _record_sizes(model, shape)
    traced = traced_groups(graph, model)
    if not traced:
        raise UsageError(f"{model_spec} has no Conv or Linear layer Torch-Pruning can prune",
                         "pass a CNN whose layers are torch.nn.Conv2d / torch.nn.Linear modules")
    outputs = [g for g in traced if not g.layers_in]
    names = {id(g): (OUTPUT_GROUP if i == 0 else f"{OUTPUT_GROUP}:{g.root}") for i, g in enumerate(outputs)}
    groups = [ChannelGroup(name=INPUT_GROUP, full_width=shape[1], candidates=(shape[1],), fixed=True)]
    groups += [_channel_group(g, names.get(id(g), g.root), grid, fixed=id(g) in names) for g in traced]

    out_group: dict[str, str] = {}
    in_groups: dict[str, list[tuple[int, str]]] = {}
    for g, cg in zip(traced, groups[1:], strict=True):
        for layer in g.layers_out:
            out_group.setdefault(layer, cg.name)
        for layer in g.layers_in:
            in_groups.setdefault(layer, []).append((g.in_offsets.get(layer, 0), cg.name))
    layers = []
    for name, module in model.named_modules():
        if name not in sizes:
            continue
        if name not in out_group:
            raise _untraced(model_spec, name, "is missing from Torch-Pruning's graph")
        reads = [n for _, n in sorted(in_groups.get(name, []))]
        in_group = "+".join(dict.fromkeys(reads)) or INPUT_GROUP
        layers.append(_layer_spec(name, module, in_group, out_group[name], sizes[name]))
    _check_widths(model_spec, groups, layers)
    return PruningSpace(model=model_spec, input_shape=shape, groups=tuple(groups), layers=tuple(layers),
                        grid=grid)


def build_space_from_spec(spec: str, input_shape: tuple[int, int, int, int], *,
                          num_classes: int | None = None, weights: str | None = None,
                          trust_code: bool = False, grid: CandidateGrid | None = None) -> PruningSpace:
    """:func:`build_space` of ``create_model(spec, ...)`` (what ``itcp-deploy groups`` shows)."""
    from itcp_deploy.models import create_model

    model = create_model(spec, num_classes=num_classes, weights=weights, trust_code=trust_code)
    return build_space(model, input_shape, model_spec=spec, grid=grid)
