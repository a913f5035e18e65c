"""The pruning space as plain data: channel groups, their candidate widths, and which group sets each layer's
input and output width.

This is what every later stage consumes: the profiler draws width plans from it, the performance model keys
its per-layer tables on it, and the DP searches over it. It holds no torch objects, so ``perfmodel/`` and
``search/`` can import it. :mod:`itcp_deploy.pruning.space_builder` builds it from a model with
Torch-Pruning's dependency graph.

Example (CIFAR ResNet-20, abridged)::

    groups:  input (3, fixed) | layer1.0.conv1 (16: 4,8,12,16) | conv1 (stage 1, 16) | ...
             output (10, fixed)
    layers:  conv1            in=input           out=conv1
             layer1.0.conv1   in=conv1           out=layer1.0.conv1
             layer1.0.conv2   in=layer1.0.conv1  out=conv1          (residual add ties it to the stage group)
             linear           in=layer3.0.conv2  out=output
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from math import gcd

from itcp_deploy.errors import UsageError

INPUT_GROUP = "input"
OUTPUT_GROUP = "output"


@dataclass(frozen=True)
class CandidateGrid:
    """How candidate widths are drawn: every ``step_small`` channels for groups up to ``small_max`` wide,
    every ``step_large`` above; never below ``min_width``; the full width always included."""

    step_small: int = 4
    step_large: int = 8
    small_max: int = 64
    min_width: int = 4

    def aligned_to(self, block: int) -> CandidateGrid:
        """This grid with each step cut to a divisor of the channel ``block`` (their gcd), so every multiple of
        the block, where a latency step tops out, stays a candidate."""
        return replace(self, step_small=gcd(self.step_small, block), step_large=gcd(self.step_large, block))

    def candidates(self, full_width: int, multiple_of: int = 1) -> tuple[int, ...]:
        """Candidate widths of a group ``full_width`` wide whose widths must be multiples of ``multiple_of``
        (the ``groups`` of grouped convs it feeds): the multiple of ``multiple_of`` nearest the nominal step
        (at least ``multiple_of``), so a ResNeXt group with 32 conv groups steps by 32, not by 8 x 32 = 256
        (which left a 128- or 256-wide group unprunable and the rest with two or four widths)."""
        step = self.step_small if full_width <= self.small_max else self.step_large
        step = multiple_of * max(1, round(step / multiple_of))
        lo = max(self.min_width, multiple_of)
        widths = {w for w in range(step, full_width + 1, step) if w >= lo and w % multiple_of == 0}
        widths.add(full_width)
        return tuple(sorted(widths))


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be pruned together (coupled by residual adds, depthwise convs, concatenation).

    ``name`` is stable across runs: the module name of the first layer (in module order) whose output
    channels the group sets, or ``input``/``output`` for the fixed network ends. ``removable``: the group is
    the inner width of a residual branch whose removal leaves the other path of its add
    (:mod:`itcp_deploy.pruning.removal`); width 0 is then a candidate once :meth:`PruningSpace.with_removal`
    allows it.
    """

    name: str
    full_width: int
    candidates: tuple[int, ...]
    layers_out: tuple[str, ...] = ()
    layers_in: tuple[str, ...] = ()
    fixed: bool = False
    removable: bool = False

    def index(self, width: int) -> int:
        return self.candidates.index(width)


@dataclass(frozen=True)
class LayerSpec:
    """A Conv or Linear layer and the groups that set its widths (both the same group when depthwise)."""

    name: str
    op: str  # "conv" | "linear"
    in_group: str
    out_group: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    in_hw: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)

    @property
    def depthwise(self) -> bool:
        return self.op == "conv" and self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def signature(self, w_in: int, w_out: int) -> str:
        """What makes two layer instances cost the same: op, kernel, stride, padding, groups, size, widths."""
        g = "dw" if self.depthwise else str(self.groups)
        return (f"{self.op}|k{self.kernel[0]}x{self.kernel[1]}|s{self.stride[0]}x{self.stride[1]}"
                f"|p{self.padding[0]}x{self.padding[1]}|g{g}|hw{self.in_hw[0]}x{self.in_hw[1]}|{w_in}->{w_out}")

    def macs(self, w_in: int, w_out: int) -> int:
        """Multiply-accumulates of this layer at the given widths (batch 1)."""
        if self.op == "linear":  # per row: a classifier has one, ConvNeXt's NHWC Linear layers H x W
            return w_in * w_out * self.out_hw[0] * self.out_hw[1]
        per_out = self.kernel[0] * self.kernel[1] * (1 if self.depthwise else w_in // self.groups)
        return per_out * w_out * self.out_hw[0] * self.out_hw[1]


@dataclass(frozen=True)
class PruningSpace:
    """Every prunable group of one model at one input shape, and every Conv/Linear layer's groups."""

    model: str
    input_shape: tuple[int, int, int, int]
    groups: tuple[ChannelGroup, ...]
    layers: tuple[LayerSpec, ...]
    grid: CandidateGrid = field(default_factory=CandidateGrid)
    ignore_layers: tuple[str, ...] = ()  # --ignore-layers patterns whose groups were fixed

    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise UsageError(f"group {name!r} does not exist in {self.model}",
                         "list the groups with `itcp-deploy groups MODEL`")

    @property
    def prunable(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if not g.fixed)

    def full_widths(self) -> dict[str, int]:
        return {g.name: g.full_width for g in self.groups}

    def complete(self, widths: Mapping[str, int]) -> dict[str, int]:
        """Validate a (possibly partial) width plan and fill missing groups with their full width."""
        names = {g.name for g in self.groups}
        for name in widths:
            if name not in names:
                raise UsageError(f"group {name!r} does not exist in {self.model}",
                                 "list the groups with `itcp-deploy groups MODEL`")
        out = {}
        for g in self.groups:
            w = int(widths.get(g.name, g.full_width))
            if w not in g.candidates:
                raise UsageError(f"width {w} is not a candidate of group {g.name!r}",
                                 f"use one of {list(g.candidates)}")
            out[g.name] = w
        return out

    def macs(self, widths: Mapping[str, int]) -> int:
        """Conv/Linear MACs of a width plan (what the ``flops`` baseline budgets)."""
        w = self.complete(widths)
        return sum(layer.macs(sum(w[g] for g in layer.in_group.split("+")), w[layer.out_group])
                   for layer in self.layers)

    def with_removal(self, on: bool = True) -> PruningSpace:
        """This space with width 0 (the residual branch removed) a candidate of every removable group (``on``),
        or with no width-0 candidate (``on=False``)."""
        def cands(g: ChannelGroup) -> tuple[int, ...]:
            rest = tuple(w for w in g.candidates if w > 0)
            return (0, *rest) if on and g.removable else rest

        return replace(self, groups=tuple(replace(g, candidates=cands(g)) for g in self.groups))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> PruningSpace:
        tuples = ("candidates", "layers_out", "layers_in")
        groups = tuple(ChannelGroup(**{k: (tuple(v) if k in tuples else v) for k, v in g.items()})
                       for g in d["groups"])
        pairs = ("kernel", "stride", "padding", "in_hw", "out_hw")
        layers = tuple(LayerSpec(**{k: (tuple(v) if k in pairs else v) for k, v in layer.items()})
                       for layer in d["layers"])
        space = cls(model=d["model"], input_shape=tuple(d["input_shape"]), groups=groups, layers=layers,
                    grid=CandidateGrid(**d.get("grid", {})), ignore_layers=tuple(d.get("ignore_layers", ())))
        _check_space(space)
        return space


def _positive_ints(values: object, size: int | None = None) -> bool:
    return (isinstance(values, tuple) and (size is None or len(values) == size)
            and all(type(v) is int and v > 0 for v in values))


def _candidates_ok(g: ChannelGroup) -> bool:
    """Sorted, distinct, positive widths; a removable group may also hold 0 (its branch removed)."""
    widths = g.candidates[1:] if g.removable and g.candidates[:1] == (0,) and len(g.candidates) > 1 else g.candidates
    return _positive_ints(widths) and len(widths) > 0 and list(g.candidates) == sorted(set(g.candidates))


def _check_space(space: PruningSpace) -> None:
    """Types and references of a space read from a file; raises ``ValueError`` naming the first bad field
    (the loaders turn it into one line: a hand-edited or damaged file must not fail deep inside the DP)."""
    def need(ok: bool, field: str) -> None:
        if not ok:
            raise ValueError(f"space.{field} is malformed")

    need(isinstance(space.model, str) and _positive_ints(space.input_shape, 4), "model/input_shape")
    need(all(isinstance(p, str) for p in space.ignore_layers), "ignore_layers")
    names = {g.name for g in space.groups}
    need(len(names) == len(space.groups) and all(isinstance(n, str) for n in names), "groups (names)")
    for g in space.groups:
        need(type(g.full_width) is int and g.full_width > 0 and isinstance(g.candidates, tuple) and _candidates_ok(g)
             and isinstance(g.fixed, bool) and isinstance(g.removable, bool)
             and all(isinstance(n, str) for n in (*g.layers_in, *g.layers_out)), f"groups[{g.name}]")
    for layer in space.layers:
        ok = (isinstance(layer.name, str) and layer.op in ("conv", "linear") and isinstance(layer.in_group, str)
              and layer.out_group in names and all(n in names for n in layer.in_group.split("+"))
              and all(type(v) is int and v > 0 for v in (layer.in_channels, layer.out_channels, layer.groups))
              and all(_positive_ints(p, 2) for p in (layer.kernel, layer.stride, layer.in_hw, layer.out_hw))
              and isinstance(layer.padding, tuple) and len(layer.padding) == 2
              and all(type(v) is int and v >= 0 for v in layer.padding))
        need(ok, f"layers[{layer.name}]")
