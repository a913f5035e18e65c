"""How each ``--method`` finds its plan, by name (:data:`STRATEGIES`): the stages ask the registry, never the
method's kind.

- ``itcp`` and every baseline search (:data:`~itcp_deploy.search.baselines.SEARCH_METHODS`): the closed loop on
  predicted budgets (:func:`~itcp_deploy.pipeline.closed_loop.closed_loop`), then the one-shot recipe (the
  loop's own one-shot model of the plan, where it built its rounds as shipped).
- ``tp-taylor``, ``tp-taylor-round``: Torch-Pruning's own pruner behind the same SLA. It has no latency model,
  so it bisects on its ``pruning_ratio`` against the candidate's latency measured by the same
  :class:`~itcp_deploy.pipeline.meter.TargetMeter` (engine, timing, safety margin) as ITCP's loop, on the same
  calibration batches ITCP's scores use. It keeps its own pruned model (``folder.peer_model``), which the
  finetuning stage takes instead of applying widths: Torch-Pruning's channel choice is kept as it made it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from itcp_deploy.errors import UsageError
from itcp_deploy.pipeline.closed_loop import closed_loop, loop_record
from itcp_deploy.pipeline.meter import TargetMeter
from itcp_deploy.pipeline.stages import RunContext, Strategy, channel_importance_of, one_shot, score_batches
from itcp_deploy.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from itcp_deploy.plan import PruningPlan


def peer_loop(ctx: RunContext, meters: list[TargetMeter]) -> dict:
    """The peer's measured bisection; returns the rounds like :func:`closed_loop`."""
    from itcp_deploy.engines.build import build_engine
    from itcp_deploy.engines.device import channel_block
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.pruning import save_pruned
    from itcp_deploy.pruning.tp_peer import group_widths, peer_search

    c, (target,), (meter,) = ctx.config, ctx.config.targets, meters
    dense_ms, aim_ms = meter.dense_ms(), meter.aim_ms
    rounds: list[dict] = []

    def measured_over_dense(model: nn.Module) -> float:
        k = len(rounds)
        built = build_engine(model, target.input_shape, *ctx.folder.target(target.name).round_engine("peer", k),
                             target.engine)
        m = meter.measure(built.artifact)
        rounds.append({"round": k, "kind": f"{c.method} try", "score": None, "method": c.method,
                       "widths": group_widths(model, ctx.space), "targets": [
                           {"name": target.name, "budget_ms": aim_ms, "predicted_ms": None, "aim_ms": aim_ms,
                            "measured_ms": m.measured_ms, "ratio_to_dense": m.ratio}]})
        ctx.log(f"{c.method} try {k}: measured {m.measured_ms:.4f} ms ({m.ratio:.3f} x dense), aim {aim_ms:.4f} ms")
        return m.measured_ms / dense_ms

    found = peer_search(ctx.inputs.model, ctx.space, c.method, ctx.inputs.batches(score_batches(c)),
                        measure=measured_over_dense, target=aim_ms / dense_ms, block=channel_block())
    for entry, step in zip(rounds, found.steps, strict=True):
        entry["pruning_ratio"] = step["pruning_ratio"]
    notes = [] if found.met else [
        f"no pruning_ratio of {c.method} measured under the aim {aim_ms:.4g} ms; kept the fastest "
        f"({found.measured_ratio * dense_ms:.4g} ms at pruning_ratio {found.pruning_ratio:.3f})"]
    plan = PruningPlan(model=c.model, input_shape=tuple(c.input_shape),
                       widths=group_widths(found.model, ctx.space), method=c.method, criterion="taylor",
                       importance="taylor", budget_ms=aim_ms, weights=c.weights)
    save_pruned(ctx.folder.peer_model, found.model, plan, plan_path=ctx.folder.plan)
    kept = next(i for i, s in enumerate(found.steps) if s["pruning_ratio"] == found.pruning_ratio)
    return {**loop_record(c.targets, meters, rounds, notes, kept), "pruning_ratio": found.pruning_ratio}


def peer_model(ctx: RunContext, plan: PruningPlan) -> tuple[nn.Module, list[str]]:
    """The peer's own pruned model (its channel choice), BatchNorm re-estimated; nothing is refit."""
    from itcp_deploy.pruning import load_pruned
    from itcp_deploy.train import recalibrate_bn

    c = ctx.config
    model = load_pruned(ctx.folder.peer_model, plan, weights=c.weights, trust_code=c.trust_code,
                        base=ctx.inputs.model).eval()  # prune()'s own module: its name is no spec to rebuild from
    return recalibrate_bn(model, ctx.inputs.batches(c.recipe.bn_batches), num_batches=c.recipe.bn_batches), []


def one_shot_model(ctx: RunContext, plan: PruningPlan) -> tuple[nn.Module, list[str]]:
    """The plan made into a model by the one-shot recipe (:func:`~itcp_deploy.pipeline.stages.one_shot`). Where
    the loop already made it, to build its round's engine as it will ship, the loop's model is taken: the same
    recipe on the same plan, not run again (25 minutes of compensation for RetinaNet at 512)."""
    from itcp_deploy.pruning import load_pruned

    refit = (ctx.state.done("loop") or {}).get("shipped_refit")
    if refit is None or not ctx.folder.shipped_model.is_file():
        return one_shot(ctx, plan.widths, channel_importance_of(ctx))
    c = ctx.config
    model = load_pruned(ctx.folder.shipped_model, plan, weights=c.weights, trust_code=c.trust_code,
                        base=ctx.inputs.model)
    return model.eval(), refit


BUDGET = Strategy(loop=closed_loop, pruned=one_shot_model)
PEER = Strategy(loop=peer_loop, pruned=peer_model)

STRATEGIES: Registry[Strategy] = Registry("method")


def _register() -> None:
    from itcp_deploy.pruning.tp_peer import PEER_METHODS
    from itcp_deploy.search.baselines import SEARCH_METHODS

    for name in SEARCH_METHODS:
        STRATEGIES.add(name, BUDGET)
    for name in PEER_METHODS:
        STRATEGIES.add(name, PEER)


_register()


def strategy_for(method: str, targets: int) -> Strategy:
    """The strategy of ``method``; only ``itcp`` plans for several targets at once (the vector DP)."""
    if targets > 1 and method != "itcp":
        raise UsageError(f"--method {method} plans for one target", "several targets need --method itcp")
    return STRATEGIES.get(method)


__all__ = ["STRATEGIES", "strategy_for"]
