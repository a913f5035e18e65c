"""Views that split the channel dimension and merge it back (channel shuffle), which Torch-Pruning cannot map.

ShuffleNet's ``x.view(N, g, C // g, H, W).transpose(1, 2).reshape(N, C, H, W)`` permutes channels. Torch-Pruning
(TP) only maps channel indices through a view that flattens or unflattens feature maps into a Linear layer; on a
view into ``(N, g, C/g, H, W)`` its index mapping divides by zero (``ZeroDivisionError`` while tracing), and
were it skipped, channel ``i`` on one side would silently be taken for channel ``i`` on the other. So
:func:`record_channel_views` notes such views while TP traces (by their autograd node), TP's index mapping
leaves exactly those nodes alone, and :func:`crosses_channel_view` tells the caller which groups flow through
one: those groups keep their width (the rest of the network, e.g. each ShuffleNet branch's inner channels,
stays prunable). Other users of TP in the process are unaffected: only graphs that carry a recorded set skip.

TP also maps a reshape as a flatten whenever the channel counts it infers on both sides differ, with a stride
of their ratio. That is right only for ``(N, C, H, W) -> (N, C*H*W)`` into a Linear (or back). Attention
reshapes are not flattens: a 4-D ``matmul`` (Swin, MaxViT) views attention maps inside aten, where no Python
call shows them, and TP's stride mapping multiplied index lists by the head dim at every block (13.5 GB for
swin_t). So the recorder keeps the shapes of every view, a stride mapping survives only on a verified flatten,
and any other reshape it was put on counts as a channel view (unmapped; the groups through it keep width).

The same blocks split channels with ``x.chunk(2, dim=1)``. TP 1.6 reads a chunk's sizes from autograd only
under an attribute name older torch used (``_saved_self_sizes``, now ``_saved_self_sym_sizes``) and otherwise
guesses them from the layers that read each part, which fails when a part goes straight into a concatenation
(wrong offsets, an ``IndexError`` later). For the graphs traced here the chunk sizes are read from autograd.

Concatenations likewise: TP infers each input's size by walking the graph, gives up past a recursion depth
(``None``), and then adds ``None`` to an int (``TypeError`` tracing swin_s, whose 18-block stage is deeper than
swin_t's). The recorder notes the sizes along the concatenated dimension of every ``torch.cat`` it sees, and
TP uses those. A concatenation whose sizes are still unknown is left unmapped: the groups through it keep width.

TP also recomputes every index mapping of the graph on each group query (``get_pruning_group``), walking up to
500 nodes per reshape each time: 79 passes over ~460 reshapes in swin_s's ``build_space`` (37 CPU-seconds,
14 without the repeats), and the zoo sweep's cap ran out in its profile. The mapping depends only on the layers'
shapes, so for the graphs traced here a pass is skipped while no parameter's shape changed since the last one
(a pruning always changes one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch_pruning as tp
from torch.overrides import TorchFunctionMode
from torch_pruning import ops
from torch_pruning.dependency import index_mapping, shape_infer

_ATTR = "_itcp_channel_views"
_SHAPES = "_itcp_view_shapes"
_CATS = "_itcp_concat_sizes"
_MAPPED = "_itcp_mapped_shapes"
_CONCATS = (torch.cat, torch.concat, torch.concatenate)


def _splits_or_merges_channels(a: torch.Size, b: torch.Size) -> bool:
    """(N, C, H, W) -> (N, g, C/g, H, W) or back."""
    if len(a) == 5 and len(b) == 4:
        a, b = b, a
    return (len(a) == 4 and len(b) == 5 and a[0] == b[0] and b[1] > 1 and b[1] * b[2] == a[1]
            and tuple(b[3:]) == tuple(a[2:]))


def _flattens_feature_maps(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """(N, C, H, W) -> (N, C*H*W) or back: the one reshape TP's stride mapping describes."""
    if len(a) == 2 and len(b) == 4:
        a, b = b, a
    return len(a) == 4 and len(b) == 2 and a[0] == b[0] and a[1] * a[2] * a[3] == b[1]


class _Recorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.grad_fns: set = set()
        self.shapes: dict = {}  # autograd node -> (input shape, output shape), for TP's reshape mapping
        self.concats: dict = {}  # autograd node of a torch.cat -> sizes of its traced inputs along its dim

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func in _CONCATS and isinstance(result, torch.Tensor) and result.grad_fn is not None:
            dim = (kwargs or {}).get("dim", args[1] if len(args) > 1 else 0)
            # TP's node has an input for each part with an autograd node (leaves and constants have none)
            self.concats[result.grad_fn] = [int(t.shape[dim]) for t in args[0] if t.grad_fn is not None]
        x = args[0] if args else None
        if isinstance(result, torch.Tensor) and isinstance(x, torch.Tensor) and result.grad_fn is not None:
            self.shapes[result.grad_fn] = (tuple(x.shape), tuple(result.shape))
            if _splits_or_merges_channels(x.shape, result.shape):
                self.grad_fns.add(result.grad_fn)
        return result


@contextlib.contextmanager
def record_channel_views(graph: tp.DependencyGraph) -> Iterator[None]:
    """Within the block, ``graph.build_dependency(...)`` skips the index mapping of channel-splitting views."""
    _install()
    recorder = _Recorder()
    setattr(graph, _ATTR, recorder.grad_fns)
    setattr(graph, _SHAPES, recorder.shapes)
    setattr(graph, _CATS, recorder.concats)
    with recorder:
        yield


def crosses_channel_view(graph: tp.DependencyGraph, group: tp.dependency.Group) -> bool:
    """Whether the group's channels pass through a recorded channel-splitting view."""
    views = getattr(graph, _ATTR, ())
    return bool(views) and any(item.dep.target.grad_fn in views or item.dep.source.grad_fn in views
                               for item in group)


def _chunk_sizes(grad_fn, parts: int) -> list[int] | None:
    """Channel sizes of a ``chunk`` along dim 1 from its autograd node, if it has ``parts`` parts."""
    if getattr(grad_fn, "_saved_dim", None) != 1 or not hasattr(grad_fn, "_saved_split_size"):
        return None
    total, size = int(grad_fn._saved_self_sym_sizes[1]), int(grad_fn._saved_split_size)
    sizes = [size] * (total // size) + ([total % size] if total % size else [])
    return sizes if len(sizes) == parts else None


def _drop_stride_mappings(node) -> bool:
    """Remove the flatten (stride) index mappings TP put on a reshape node's edges; whether there were any."""
    edges = list(node.dependencies)
    for other in (*node.inputs, *node.outputs):
        edges += [dep for dep in other.dependencies if dep.target is node]
    found = False
    for dep in edges:
        if isinstance(dep.index_mapping[0], index_mapping._FlattenIndexMapping):
            dep.index_mapping[0], found = None, True
    return found


def _install() -> None:
    """Wrap TP's reshape index mapping and split-size inference once (see the module docstring)."""
    original = index_mapping.update_reshape_index_mapping
    if getattr(original, "_itcp_wrapped", False):
        return
    original_shapes = shape_infer.init_shape_information

    def init_shape_information(graph):
        original_shapes(graph)
        if not hasattr(graph, _ATTR):
            return
        for node in graph.module2node.values():
            sizes = _chunk_sizes(node.grad_fn, len(node.outputs)) if node.type == ops.OPTYPE.SPLIT else None
            if sizes:
                node.module.split_sizes = sizes
                node.module.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]

    def update_reshape_index_mapping(graph, reshape_node):
        views = getattr(graph, _ATTR, None)
        if views is None:
            return original(graph, reshape_node)
        if reshape_node.grad_fn in views:
            return None
        original(graph, reshape_node)
        shapes = getattr(graph, _SHAPES, {}).get(reshape_node.grad_fn)  # None: a view inside an aten op
        if (shapes is None or not _flattens_feature_maps(*shapes)) and _drop_stride_mappings(reshape_node):
            views.add(reshape_node.grad_fn)  # TP took it for a flatten, but it is not one: groups keep width
        return None

    update_reshape_index_mapping._itcp_wrapped = True  # type: ignore[attr-defined]
    index_mapping.update_reshape_index_mapping = update_reshape_index_mapping
    index_mapping.update_concat_index_mapping = _concat_mapping(index_mapping.update_concat_index_mapping)
    index_mapping.update_index_mapping = _unless_unchanged(index_mapping.update_index_mapping)
    shape_infer.init_shape_information = init_shape_information


def _concat_mapping(original):
    """TP's concatenation mapping, fed the recorded sizes; unknown sizes leave the node unmapped."""
    def update_concat_index_mapping(graph, cat_node):
        views = getattr(graph, _ATTR, None)
        if views is None or cat_node.type != ops.OPTYPE.CONCAT:
            return original(graph, cat_node)
        sizes = getattr(graph, _CATS, {}).get(cat_node.grad_fn)
        if cat_node.module.concat_sizes is None and sizes and len(sizes) == len(cat_node.inputs):
            cat_node.module.concat_sizes = sizes
        try:
            original(graph, cat_node)
        except TypeError:  # TP adds an input size it could not infer (None) to an int
            if None not in (cat_node.module.concat_sizes or ()):
                raise
        if None in (cat_node.module.concat_sizes or ()):
            views.add(cat_node.grad_fn)  # left unmapped: the groups through it keep their width
        return None

    return update_concat_index_mapping


def _unless_unchanged(original):
    """TP's whole-graph index mapping pass, skipped when no parameter changed shape since the last pass."""
    def update_index_mapping(graph):
        if not hasattr(graph, _ATTR):
            return original(graph)
        shapes = tuple(tuple(p.shape) for p in graph.model.parameters())
        if getattr(graph, _MAPPED, None) != shapes:
            original(graph)
            setattr(graph, _MAPPED, shapes)
        return None

    return update_index_mapping
