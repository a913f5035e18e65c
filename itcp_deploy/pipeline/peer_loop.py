"""``itcp-deploy run --method tp-taylor | tp-taylor-round``: Torch-Pruning's own pruner behind the same SLA.

The peer has no latency model, so instead of the DP's closed loop it bisects on its ``pruning_ratio`` against
the candidate's latency measured interleaved with the dense engine (the same engine, timing and safety margin
as ITCP's loop), on the same calibration batches ITCP's scores use. It writes ``widths.json`` (the widths the
peer chose, whatever they are) and the pruned weights, which the finetuning stage loads instead of applying
widths: Torch-Pruning's channel choice is kept as it made it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from itcp_deploy.pipeline.closed_loop import LoopInputs

PEER_MODEL = "peer_pruned.pt"


def peer_loop(inputs: LoopInputs, batches: Iterable, log: Callable[[str], None]) -> dict:
    """Run the peer's search; returns the rounds like :func:`itcp_deploy.pipeline.closed_loop.closed_loop`."""
    from itcp_deploy.engines.build import build_engine
    from itcp_deploy.engines.device import channel_block
    from itcp_deploy.pipeline.closed_loop import run_meter
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.pruning import save_pruned
    from itcp_deploy.pruning.tp_peer import group_widths, peer_search

    c = inputs.config
    meter = run_meter(c, inputs.dense_artifact)
    dense_ms, sla_ms, target_ms = meter.dense_ms(), meter.sla_ms, meter.aim_ms
    rounds: list[dict] = []

    def measured_over_dense(model) -> float:
        k = len(rounds)
        built = build_engine(model, c.input_shape, inputs.folder.rounds, f"peer{k}", c.engine)
        m = meter.measure(built.artifact)
        rounds.append({"round": k, "budget_ms": target_ms, "predicted_ms": None, "measured_ms": m.measured_ms,
                       "ratio_to_dense": m.ratio, "widths": group_widths(model, inputs.space)})
        log(f"{c.method} try {k}: measured {m.measured_ms:.4f} ms ({m.ratio:.3f} x dense), target {target_ms:.4f} ms")
        return m.measured_ms / dense_ms

    found = peer_search(inputs.model, inputs.space, c.method, batches, measure=measured_over_dense,
                        target=target_ms / dense_ms, block=channel_block())
    for entry, step in zip(rounds, found.steps, strict=True):
        entry["pruning_ratio"] = step["pruning_ratio"]
    notes = [] if found.met else [
        f"no pruning_ratio of {c.method} measured under the target {target_ms:.4g} ms; kept the fastest "
        f"({found.measured_ratio * dense_ms:.4g} ms at pruning_ratio {found.pruning_ratio:.3f})"]
    plan = PruningPlan(model=c.model, input_shape=tuple(c.input_shape),
                       widths=group_widths(found.model, inputs.space), method=c.method, criterion="taylor",
                       importance="taylor", budget_ms=target_ms, weights=c.weights)
    save_pruned(inputs.folder.root / PEER_MODEL, found.model, plan, plan_path=inputs.folder.plan)
    return {"sla_ms": sla_ms, "target_ms": target_ms, "dense_measured_ms": dense_ms, "rounds": rounds,
            "notes": notes, "pruning_ratio": found.pruning_ratio}
