"""Per-layer times of a profiled engine: the backend's node times summed into the model's Conv/Linear layers."""

from __future__ import annotations

from collections.abc import Callable

from itcp_deploy.engines.backend import ATTACHED
from itcp_deploy.profiling.records import ATTACHED_SUFFIX
from itcp_deploy.profiling.timing import runs_within

LAYER_SECONDS = 20.0  # an engine's profiled runs for layer times stop at about this long (binds above 67 ms a run)


def split_layers(
    raw_ms: dict[str, float], node_module: dict[str, str | None], latency_ms: float, per_node_cost: bool = True
) -> dict:
    """Sum backend nodes into layers, after removing the profiler's own per-node cost.

    A profiled run costs more than an unprofiled one by a roughly fixed amount per node (timestamps and
    bookkeeping inside each node event: ~4 us per node with onnxruntime 1.32 on one core, which doubled the
    node sum of a ResNet-20 at width 4). When the node times add up to more than the measured latency, one
    per-node cost ``c`` is removed from every node, ``max(0, t - c)``, with ``c`` chosen (by bisection) so
    that ``sum(layer_ms) + other_ms`` equals the engine's measured median latency; differences between layers
    and widths are kept. Otherwise the times are used as they are.

    ``per_node_cost=False`` is for profilers that cost nothing per node (OpenVINO's performance counters:
    counted and plain runs of one engine, interleaved, take the same time and the node times add up to it).
    There an excess can only be drift between the profiling window and the timing window on a shared machine,
    which slows every node alike, so the times are scaled down by one factor instead.

    Returns:
        ``{"layer_ms": {module: ms}, "other_ms": ms}``; nodes mapped to no module count as "other".
    """
    times = list(raw_ms.values())
    excess = sum(times) > latency_ms > 0
    lo, hi = 0.0, max(times, default=0.0)
    if excess and per_node_cost:
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if sum(max(0.0, t - mid) for t in times) > latency_ms else (lo, mid)
    overhead = lo if excess and per_node_cost else 0.0
    scale = latency_ms / sum(times) if excess and not per_node_cost else 1.0
    layer_ms: dict[str, float] = {}
    other_ms = 0.0
    for name, ms in raw_ms.items():
        ms = max(0.0, ms - overhead) * scale
        module = node_module.get(name)
        if module is None:
            other_ms += ms
        else:
            layer_ms[module] = layer_ms.get(module, 0.0) + ms
    return {"layer_ms": layer_ms, "other_ms": other_ms}


def layer_of_node(node_to_module: dict[str, str], node: str | None) -> str | None:
    """The module a backend node's time goes to: ``layer`` for the layer's own nodes, ``layer+`` for the ops
    attached to its output (:data:`~itcp_deploy.engines.backend.ATTACHED`,
    :data:`~itcp_deploy.profiling.records.ATTACHED_SUFFIX`), None for "other"."""
    if node and node.startswith(ATTACHED):
        module = node_to_module.get(node.removeprefix(ATTACHED))
        return module + ATTACHED_SUFFIX if module else None
    return node_to_module.get(node or "")


def layer_times(run, plans: list, builds: dict[str, dict], progress: Callable[[str, int, int], None],
                session: str | None, latency_ms: dict[str, float]) -> dict:
    """Per-layer times of every plan: in context where the backend profiles layers, else isolated (the rest of
    the engine's latency in ``session``, as measured). In context, an engine's profiled runs (``layer_runs``) and
    their warm-up stop at about :data:`LAYER_SECONDS` and ``max_round_s`` at its measured latency (``latency_ms``,
    by engine id): a detector that takes a second a run is profiled in 20 runs, not 300."""
    if not run.backend.in_context_layers:
        from itcp_deploy.profiling.isolated import isolated_layer_ms

        return isolated_layer_ms(run, plans, session)
    layers = {}
    for i, plan in enumerate(plans):
        progress("layers", i, len(plans))
        latency = latency_ms[plan.engine_id]
        runs = runs_within(run.config.layer_runs, latency, LAYER_SECONDS)
        warmup = runs_within(run.config.timing.warmup, latency, run.config.timing.max_round_s)
        layers[plan.engine_id] = run.measure_layers(plan, builds[plan.engine_id], runs, warmup)
    progress("layers", len(plans), len(plans))
    return layers
