"""Torch-Pruning's own pruner as the peer baseline (issue 13): ``tp-taylor`` and ``tp-taylor-round``.

What a user would reach for instead of ITCP: ``tp.pruner.MetaPruner`` with ``GroupTaylorImportance`` (the
library's defaults), ``global_pruning=True``, the classifier's output left alone. ``tp-taylor`` keeps the default
``round_to`` (none); ``tp-taylor-round`` rounds every pruned layer to the engine's channel block, the fix users
apply by hand when a pruned model is not faster. Torch-Pruning has no latency model, so the budget is reached by
bisection on its one knob, ``pruning_ratio``, against latency *measured* through the caller's engine
(:func:`bisect_measured`). Gradients are taken once, on the same calibration batches ITCP scores with, and reused
for every ratio the bisection tries, so each try differs only in the ratio.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from itcp_deploy.pruning.importance import Batch, accumulate_gradients
from itcp_deploy.pruning.removal import is_removed
from itcp_deploy.pruning.tracing import network_only, restore_requires_grad
from itcp_deploy.space import PruningSpace

PEER_METHODS = ("tp-taylor", "tp-taylor-round")


def peer_round_to(method: str, block: int) -> int | None:
    """``round_to`` of a peer method: none for ``tp-taylor``; for ``tp-taylor-round`` the engine's channel
    block (the caller's: :func:`itcp_deploy.engines.device.channel_block` for ONNX Runtime CPU)."""
    return block if method == "tp-taylor-round" else None


@dataclass
class TaylorPeer:
    """A dense model with its Taylor gradients, ready to be pruned at any ratio (the model is not changed).

    ``grads`` holds the mean gradient over ``num_batches`` calibration batches, per parameter name; a
    parameter the loss does not reach (a fixed shortcut) gets zeros, which Torch-Pruning's importance needs.
    """

    model: nn.Module
    space: PruningSpace
    round_to: int | None
    grads: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def prepare(cls, model: nn.Module, space: PruningSpace, batches: Iterable[Batch], *,
                round_to: int | None, num_batches: int = 4) -> TaylorPeer:
        work = copy.deepcopy(model)
        accumulate_gradients(work, batches, num_batches)
        grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                 for n, p in work.named_parameters()}
        return cls(model, space, round_to, grads)

    def prune(self, pruning_ratio: float) -> nn.Module:
        """A pruned deep copy: global Taylor ranking over every group, ``pruning_ratio`` of the channels cut."""
        work = copy.deepcopy(self.model).eval()
        flags = {n: p.requires_grad for n, p in work.named_parameters()}
        for p in work.parameters():  # TP traces autograd: fixed layers must be in the graph to be pruned along
            p.requires_grad_(True)
        # every width ITCP keeps is kept here too: the classifier, a detector's head outputs, --ignore-layers
        ignored = [work.get_submodule(n) for g in self.space.groups if g.fixed for n in g.layers_out]
        example = torch.zeros(*self.space.input_shape)
        with network_only(work):  # a detector is traced without its NMS, as the space was
            pruner = tp.pruner.MetaPruner(
                work, example, importance=tp.importance.GroupTaylorImportance(), global_pruning=True,
                pruning_ratio=pruning_ratio, ignored_layers=ignored, round_to=self.round_to)
        for name, p in work.named_parameters():
            p.grad = self.grads[name].clone()
        pruner.step()
        restore_requires_grad(work, flags)
        for p in work.parameters():
            p.grad = None
        return work.eval()


def group_widths(model: nn.Module, space: PruningSpace) -> dict[str, int]:
    """Actual width of every prunable group of ``space`` in ``model`` (output channels of its root layer)."""
    out = {}
    for g in space.prunable:
        m = model.get_submodule(g.name)
        if is_removed(m):
            out[g.name] = 0
            continue
        assert isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))  # the space's layers are convs and linears
        out[g.name] = m.out_features if isinstance(m, nn.Linear) else m.out_channels
    return out


@dataclass
class PeerResult:
    """The least-pruned model the bisection found at or under the target, or the fastest one if none was.

    ``met``: whether ``measured_ratio <= target``; ``steps``: every (ratio, measured) it tried, in order.
    """

    model: nn.Module
    pruning_ratio: float
    measured_ratio: float
    met: bool
    steps: list[dict] = field(default_factory=list)


def bisect_measured(prune: Callable[[float], nn.Module], measure: Callable[[nn.Module], float], target: float,
                    *, grid: int = 10, iters: int = 4, max_ratio: float = 0.95) -> PeerResult:
    """The smallest ``pruning_ratio`` whose pruned model measures at or under ``target`` (latency / dense).

    Measured latency is not monotone in the ratio: it steps with the widths, is noisy, and Torch-Pruning
    leaves a group whole when its global cut would empty it (so very high ratios can be slower). A scan of
    ``grid`` ratios up to ``max_ratio`` finds the first that meets the target; ``iters`` bisection steps then
    narrow the gap below it. Only measured points are kept, never a guess; if none meets the target the
    fastest one is returned with ``met=False``.
    """
    steps: list[dict] = []

    def attempt(ratio: float) -> PeerResult:
        model = prune(ratio)
        measured = float(measure(model))
        steps.append({"pruning_ratio": ratio, "measured_ratio": measured})
        return PeerResult(model, ratio, measured, measured <= target, steps)

    scanned: list[PeerResult] = []
    lo = 0.0
    for k in range(1, grid + 1):
        scanned.append(attempt(max_ratio * k / grid))
        if scanned[-1].met:
            break
        lo = scanned[-1].pruning_ratio
    if not scanned[-1].met:
        return min(scanned, key=lambda r: r.measured_ratio)
    tried = scanned[-1]
    best, hi = tried, tried.pruning_ratio
    for _ in range(iters):
        mid = attempt((lo + hi) / 2)
        if mid.met:
            best, hi = mid, mid.pruning_ratio
        else:
            lo = mid.pruning_ratio
    return best


def peer_search(model: nn.Module, space: PruningSpace, method: str, batches: Iterable[Batch], *,
                measure: Callable[[nn.Module], float], target: float, block: int) -> PeerResult:
    """Prune ``model`` with peer ``method`` to measured latency / dense <= ``target`` (see the module doc).

    ``batches``: the calibration batches ITCP's scores use; ``measure(pruned)``: its latency / dense latency,
    measured through the caller's engine; ``block``: the engine's channel block (``tp-taylor-round``).
    """
    peer = TaylorPeer.prepare(model, space, batches, round_to=peer_round_to(method, block))
    return bisect_measured(peer.prune, measure, target)


__all__ = ["PEER_METHODS", "PeerResult", "TaylorPeer", "bisect_measured", "group_widths", "peer_round_to",
           "peer_search"]
