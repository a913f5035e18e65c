"""The comparison's rows for Torch-Pruning's own pruner (``tp-taylor``, ``tp-taylor-round``): bisected on its
``pruning_ratio`` until the pruned engine, measured interleaved with the dense engine, is at or under
1 / speed-up (:mod:`itcp_deploy.pruning.tp_peer`); the same calibration batches as ITCP's scores."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.comparison.rows import Bench, dense_meter, engine_of

if TYPE_CHECKING:
    from torch import nn


def peer_prune(b: Bench, method: str, speedup: float) -> tuple[nn.Module, dict[str, Any]]:
    """The peer's pruned model and the row fields that say how it was found."""
    from itcp_deploy.engines.device import channel_block
    from itcp_deploy.pruning.tp_peer import group_widths, peer_search

    engines = b.out / "engines" / "engines"
    meter = dense_meter(b, speedup)

    def measure(model: nn.Module) -> float:
        engine = engine_of(b, model, {**b.space.full_widths(), **group_widths(model, b.space)})
        return meter.measure(engines / engine).ratio

    c = b.config
    calib = b.inputs.loader(c.recipe.batch_size, train=True, seed=c.calib_seed, max_samples=c.score_samples)
    found = peer_search(b.model, b.space, method, calib, measure=measure, target=1 / speedup, block=channel_block())
    b.log(f"{method} x{speedup:g}: pruning_ratio {found.pruning_ratio:.3f}, measured {found.measured_ratio:.3f} "
          f"x dense ({len(found.steps)} engines tried)")
    return found.model, {"score": None, "pruning_ratio": found.pruning_ratio, "met_target": found.met,
                         "bisection": found.steps}


__all__ = ["peer_prune"]
