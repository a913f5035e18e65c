"""Compensation after pruning, without training: refit layers by least squares to the dense network's outputs.

Channel pruning (He et al. 2017) and ThiNet: after channels are removed, the layers that read them see less
input, so their outputs drift from the dense network's, and the drift compounds layer after layer. Here each
Conv2d (``groups == 1``) and Linear of the pruned model that reads a pruned group, or that comes after one, is
refit in forward order so that, on the pruned network's own inputs, its output matches the dense layer's output
on the channels it kept::

    W = argmin ||X_pruned W^T - Y_dense[:, kept]||^2 + lam ||W - W_0||^2

a ridge regression towards the pruned weights ``W_0``, solved exactly from the Gram matrix accumulated over a
few calibration batches (``lam`` = ``ridge`` x the mean diagonal of the Gram matrix). Layers are refit one at a
time, each seeing the already refit layers before it, with BatchNorm in eval mode, so the dense statistics the
pruned BatchNorms inherit stay valid for refit outputs. Re-estimate BatchNorm afterwards as usual. Fixed layers
(``requires_grad=False``, e.g. an option-A shortcut) and grouped convs are left alone.

Cost, without gradients: a refit layer's input depends on the refits before it, so the pruned network is run in
lockstep: one forward per calibration batch, each in its own thread and one at a time, every forward paused
before each refit layer until all of them reached it and the layer was refit (:class:`_Paused`). That is one
pruned forward per batch in all, where stopping a forward at each layer in turn took one per layer and batch
(64% of ResNet-50's refit at 224). Forwards that part ways (a layer reached by some batches only) finish the
refit the old way, a forward per layer stopped at it (:func:`_capture`). The dense network's outputs do not
depend on the refits, so they are read for many layers in one forward per batch, as many layers' as fit in
``target_bytes``, and the forward stops there. An image gives each layer's regression at most
``max_positions`` of its output positions (a fixed subset, :func:`~itcp_deploy.pruning.least_squares.positions`;
64x64 maps and smaller are taken whole): the rows set what the dense outputs weigh and so how often the dense
network runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from itcp_deploy.pruning.apply import conv_multiple, keep_indices
from itcp_deploy.pruning.importance import Batch
from itcp_deploy.pruning.least_squares import dense_rows, refit_layer
from itcp_deploy.space import PruningSpace


def kept_channels(model: nn.Module, space: PruningSpace, widths: Mapping[str, int],
                  importance: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The channel indices :func:`~itcp_deploy.pruning.apply.apply_widths` keeps per group (all for full
    groups), given the same precomputed importance vectors."""
    plan = space.complete(widths)
    kept = {}
    for g in space.groups:
        if plan[g.name] < g.full_width:
            kept[g.name] = keep_indices(importance[g.name], plan[g.name], conv_multiple(model, g))
        else:
            kept[g.name] = np.arange(g.full_width)
    return kept


@dataclass(frozen=True)
class CompensationSettings:
    """``num_batches`` calibration batches per layer; ``ridge``: pull towards the pruned weights;
    ``target_bytes``: the dense outputs held at once (the more, the fewer dense forwards); ``max_positions``:
    the output positions an image gives each layer's regression, at most (see the module doc)."""

    num_batches: int = 4
    ridge: float = 1e-3
    target_bytes: int = 1 << 30
    max_positions: int = 4096


def _refittable(layer: nn.Module) -> bool:
    """A plain linear map of its weight: a subclass with its own forward (timm's weight-standardised
    ScaledStdConv2d) computes something else from the weight, so a least-squares refit would be wrong."""
    if isinstance(layer, nn.Linear):
        return type(layer).forward is nn.Linear.forward and layer.weight.requires_grad
    return (isinstance(layer, nn.Conv2d) and type(layer).forward is nn.Conv2d.forward and layer.groups == 1
            and layer.weight.requires_grad)


class _Captured(Exception):
    """Raised by a capture hook: the rest of the forward is not needed."""


def _capture(model: nn.Module, name: str, batches: list[Batch]) -> list[torch.Tensor]:
    """The input of layer ``name`` for every batch, in eval mode, without gradients. Each forward stops at the
    layer (timm EfficientNet-B0's refit 1.4x faster at 224, 2.3x at 96: bench/compensation_capture.py)."""
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, i: tuple) -> None:
        seen.append(i[0].detach())
        raise _Captured

    handle = model.get_submodule(name).register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for x, _ in batches:
                try:
                    model(x)
                except _Captured:
                    pass
    finally:
        handle.remove()
    return seen


_running = threading.local()  # the paused forward a thread runs, for the layers' hooks


class _Paused:
    """One calibration batch's forward of the pruned network in a thread of its own, paused before each refit
    layer (:meth:`at_layer`, from the layer's hook) until :meth:`step` lets it go on. One forward runs at a time,
    so each computes exactly what a forward of its own would; ``stop`` ends it where it waits."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.go, self.back = threading.Semaphore(0), threading.Semaphore(0)
        self.layer: str | None = None
        self.input: torch.Tensor | None = None
        self.error: BaseException | None = None
        self.done = self.stop = False
        self.thread = threading.Thread(target=self._run, args=(model, x), daemon=True)
        self.thread.start()

    def _run(self, model: nn.Module, x: torch.Tensor) -> None:
        _running.forward = self
        self.go.acquire()
        try:
            if not self.stop:
                with torch.no_grad():  # grad mode is per thread
                    model(x)
        except _Captured:
            pass
        except BaseException as e:  # raised again in the caller's thread
            self.error = e
        finally:
            self.done, self.layer, self.input = True, None, None
            self.back.release()

    def at_layer(self, name: str, x: torch.Tensor) -> None:
        self.layer, self.input = name, x.detach()
        self.back.release()
        self.go.acquire()
        self.layer, self.input = None, None
        if self.stop:
            raise _Captured

    def step(self) -> None:
        """Let the forward run to its next refit layer, or to its end."""
        self.go.release()
        self.back.acquire()

    def end(self) -> None:
        if not self.done:
            self.stop = True
            self.step()
        self.thread.join()


def _pause_at(name: str, todo: Mapping[str, np.ndarray]):
    def hook(_m: nn.Module, i: tuple) -> None:
        forward = getattr(_running, "forward", None)
        if forward is not None and name in todo:  # a refit layer called again goes on
            forward.at_layer(name, i[0])
    return hook


def _refit_in_lockstep(pruned: nn.Module, dense: nn.Module, todo: dict[str, np.ndarray],
                       targets: dict[str, list[torch.Tensor]], batches: list[Batch], s: CompensationSettings) -> None:
    """Refit the layers of ``todo`` as every batch's pruned forward reaches them (see the module doc), removing
    each from ``todo``; stops early, leaving the rest in ``todo``, where the forwards part ways or end before it.
    ``targets``: the dense outputs read so far (a chunk's unused ones are left in it)."""
    hooks = [pruned.get_submodule(n).register_forward_pre_hook(_pause_at(n, todo)) for n in todo]
    forwards = [_Paused(pruned, x) for x, _ in batches]
    try:
        while todo:
            for f in forwards:
                if not f.done:
                    f.step()
            if error := next((f.error for f in forwards if f.error is not None), None):
                raise error
            at = {f.layer for f in forwards}
            if len(at) != 1 or None in at:
                return
            name = str(at.pop())
            if name not in targets:
                targets.update(_dense_targets(dense, todo, batches, s))
            _refit(pruned, name, [f.input for f in forwards if f.input is not None], targets.pop(name), s)
            del todo[name]
    finally:
        for f in forwards:
            f.end()
        for h in hooks:
            h.remove()


def _dense_targets(dense: nn.Module, layers: Mapping[str, np.ndarray], batches: list[Batch],
                   s: CompensationSettings) -> dict[str, list[torch.Tensor]]:
    """The dense outputs (:func:`~itcp_deploy.pruning.least_squares.dense_rows`) of as many of ``layers`` (name ->
    kept output channels) as the first batch's forward reaches before they fill ``s.target_bytes`` over all
    batches (at least one layer; all of them when the forward ends first), per batch. Outputs are read in the
    layer's hook, before any in-place op after it (timm's squeeze-excite SiLU), and a layer called twice keeps its
    first call, as :func:`_capture` does."""
    found: dict[str, list[torch.Tensor]] = {}
    held, full = 0, False

    def read(name: str, i: int):
        def hook(m: nn.Module, _i: tuple, y: torch.Tensor) -> None:
            nonlocal held, full
            if len(found.get(name, [])) > i:  # a second call of the layer: its first counts
                return
            if i == 0 and found and held > s.target_bytes:
                full = True
                raise _Captured  # the chunk is the layers found so far
            found.setdefault(name, []).append(dense_rows(m, y.detach(), layers[name], s.max_positions))  # type: ignore[arg-type]
            held += found[name][-1].numel() * 4 * len(batches) if i == 0 else 0
            if i > 0 and all(len(v) > i for v in found.values()):
                raise _Captured
        return hook

    for i, (x, _) in enumerate(batches):  # the first batch sets the chunk; the others read only its layers
        handles = [dense.get_submodule(n).register_forward_hook(read(n, i)) for n in (found if i else layers)]
        try:
            with torch.no_grad():
                dense(x)
        except _Captured:
            pass
        finally:
            for h in handles:
                h.remove()
    return found if full else {name: found.get(name, []) for name in layers}


def _refit(pruned: nn.Module, name: str, inputs: list[torch.Tensor], targets: list[torch.Tensor],
           s: CompensationSettings) -> None:
    """Refit layer ``name`` of ``pruned`` from its ``inputs`` to the dense ``targets`` (per batch)."""
    layer = pruned.get_submodule(name)
    assert isinstance(layer, (nn.Conv2d, nn.Linear))  # _refittable checked it
    refit_layer(layer, inputs, targets, s.ridge, s.max_positions)


def _refit_each(pruned: nn.Module, dense: nn.Module, todo: dict[str, np.ndarray],
                targets: dict[str, list[torch.Tensor]], batches: list[Batch], s: CompensationSettings) -> None:
    """Refit what the lockstep left in ``todo``, a forward per layer and batch stopped at the layer."""
    while todo:
        if not any(n in targets for n in todo):
            targets = _dense_targets(dense, todo, batches, s)
        for name in [n for n in todo if n in targets]:
            _refit(pruned, name, _capture(pruned, name, batches), targets.pop(name), s)
            del todo[name]


def compensate(pruned: nn.Module, dense: nn.Module, space: PruningSpace, kept: Mapping[str, np.ndarray],
               batches: Iterable[Batch], settings: CompensationSettings | None = None) -> list[str]:
    """Refit ``pruned`` in place (see the module doc); returns the names of the refit layers, in order.

    Args:
        pruned: The pruned model (e.g. ``apply_widths(dense, space, widths, importance=...)``).
        dense: The model it was pruned from (left untouched).
        space: Their pruning space.
        kept: Per group, the sorted dense channel indices the pruned model kept (:func:`kept_channels`).
        batches: Calibration ``(images, labels)`` batches; the first ``settings.num_batches`` are used.
    """
    s = settings or CompensationSettings()
    calib = [b for _, b in zip(range(s.num_batches), batches, strict=False)]
    pruned_groups = {g for g, idx in kept.items() if len(idx) < space.group(g).full_width}
    was_training = pruned.training, dense.training
    pruned.eval()
    dense.eval()
    todo: dict[str, np.ndarray] = {}  # forward order
    drifting = False
    for layer in space.layers:
        drifting = drifting or any(g in pruned_groups for g in layer.in_group.split("+"))
        if drifting and _refittable(pruned.get_submodule(layer.name)):
            todo[layer.name] = kept[layer.out_group]
    refit = list(todo)
    targets: dict[str, list[torch.Tensor]] = {}
    _refit_in_lockstep(pruned, dense, todo, targets, calib, s)
    _refit_each(pruned, dense, todo, targets, calib, s)
    pruned.train(was_training[0])
    dense.train(was_training[1])
    return refit


@dataclass(frozen=True)
class OneShot:
    """How a plan becomes a model without training: ``calib`` batches for compensation (``compensate``) and
    ``bn_batches`` batches that re-estimate BatchNorm statistics (the first ``bn_count`` of them)."""

    calib: Iterable[Batch]
    bn_batches: Iterable[Batch]
    bn_count: int = 20
    compensate: bool = True


def prune_one_shot(dense: nn.Module, space: PruningSpace, widths: Mapping[str, int],
                   importance: Mapping[str, np.ndarray], recipe: OneShot) -> tuple[nn.Module, list[str]]:
    """The one-shot recipe, said once (``run``'s finetuning stage and the benchmarks): a pruned copy of
    ``dense`` keeping the channels of largest ``importance``, refit by least squares (``recipe.compensate``),
    BatchNorm re-estimated. Returns it and the refit layers."""
    from itcp_deploy.pruning.apply import apply_widths
    from itcp_deploy.train import recalibrate_bn

    pruned = apply_widths(dense, space, widths, importance=dict(importance))
    refit = (compensate(pruned, dense, space, kept_channels(dense, space, widths, importance), recipe.calib)
             if recipe.compensate else [])
    recalibrate_bn(pruned, recipe.bn_batches, num_batches=recipe.bn_count)
    return pruned, refit


__all__ = ["CompensationSettings", "OneShot", "compensate", "kept_channels", "prune_one_shot"]
