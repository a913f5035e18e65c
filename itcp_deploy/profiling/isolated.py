"""Per-layer times from isolated single-layer modules, for backends without in-context ones (torch).

One module per layer signature (:meth:`LayerSpec.signature`: op, kernel, stride, padding, groups, spatial size
and both widths): a Conv (bias standing in for the folded BN) + ReLU, or a Linear. Identical signatures are
timed once, in interleaved rounds, and cached under the signature, so they are shared across engines, plans
and even models. An engine's ``other_ms`` is its measured latency minus the sum of its isolated layer times
(pooling, adds, framework overhead; it may be negative when isolated layers run slower than in context).
"""

from __future__ import annotations

import contextlib
import json

import numpy as np

from itcp_deploy.profiling.cache import CacheKey
from itcp_deploy.profiling.design import PlannedEngine
from itcp_deploy.profiling.timing import measure_interleaved, summarize
from itcp_deploy.space import LayerSpec

BATCH = 64  # runners measured together per interleaved batch


def layer_module(layer: LayerSpec, w_in: int, w_out: int):
    """The isolated module and its input shape for ``layer`` at widths ``(w_in, w_out)``."""
    import torch.nn as nn

    if layer.op == "linear":
        rows = () if layer.in_hw == (1, 1) else layer.in_hw  # ConvNeXt's Linear layers read (N, H, W, C)
        return nn.Linear(w_in, w_out), (1, *rows, w_in)
    groups = (
        w_in if layer.depthwise else (layer.groups if w_in % layer.groups == 0 == w_out % layer.groups else 1)
    )
    conv = nn.Conv2d(w_in, w_out, layer.kernel, layer.stride, layer.padding, groups=groups, bias=True)
    return nn.Sequential(conv, nn.ReLU()), (1, w_in, *layer.in_hw)


def _signature(layer: LayerSpec, widths: dict[str, int]) -> str | None:
    """The layer's cost signature at ``widths``; None for a removed branch's layer (0 channels), which runs
    nothing and takes 0 ms."""
    w_in, w_out = widths[layer.in_group], widths[layer.out_group]
    return layer.signature(w_in, w_out) if w_in and w_out else None


def isolated_layer_ms(run, plans: list[PlannedEngine], session: str | None = None) -> dict[str, dict]:
    """``engine_id -> {"layer_ms": {layer: ms}, "other_ms": ms}`` , measuring missing signatures (``other_ms``:
    the engine's latency in ``session`` less its layers)."""
    from itcp_deploy.engines.torch.runner import TorchRunner

    t = run.config.timing
    settings = {"threads": run.config.engine.threads, "warmup": t.warmup, "rounds": t.rounds,
                "runs_per_round": t.runs_per_round, "device": run.config.engine.device}
    keys: dict[str, tuple[CacheKey, LayerSpec, int, int]] = {}
    for plan in plans:
        for layer in run.space.layers:
            w_in, w_out = plan.widths[layer.in_group], plan.widths[layer.out_group]
            sig = _signature(layer, plan.widths)
            if sig and sig not in keys:
                key = CacheKey(
                    kind="isolated",
                    device=run.base.device,
                    backend=run.base.backend,
                    backend_version=run.base.backend_version,
                    precision=run.base.precision,
                    input_shape=(1, w_in, *layer.in_hw),
                    model_hash="",
                    settings=json.dumps({**settings, "signature": sig}, sort_keys=True),
                )
                keys[sig] = (key, layer, w_in, w_out)
    todo = [sig for sig, (key, *_) in keys.items() if run.cache.get(key) is None]
    run.summary.measurements_cached += len(keys) - len(todo)
    for start in range(0, len(todo), BATCH):
        run.progress("isolated", start, len(todo))
        batch = todo[start : start + BATCH]
        with contextlib.ExitStack() as stack:
            runners = []
            for sig in batch:
                _, layer, w_in, w_out = keys[sig]
                module, shape = layer_module(layer, w_in, w_out)
                runners.append(stack.enter_context(TorchRunner(module, run.config.engine, input_shape=shape)))
            result = measure_interleaved(runners, None, t)
        for sig, samples in zip(batch, result.samples_ms, strict=True):
            run.cache.put(keys[sig][0], {"samples_ms": samples})
        run.summary.measurements_new += len(batch)
    run.progress("isolated", len(todo), len(todo))
    median = {
        sig: summarize([run.cache.get(key)["samples_ms"]]).stats[0].median_ms
        for sig, (key, *_) in keys.items()
    }
    out = {}
    for plan in plans:
        signatures = {layer.name: _signature(layer, plan.widths) for layer in run.space.layers}
        layer_ms = {name: median[sig] if sig else 0.0 for name, sig in signatures.items()}
        total = float(
            np.median([s for rnd in run.cache.get(run.latency_key(plan, session))["samples_ms"] for s in rnd])
        )
        out[plan.engine_id] = {"layer_ms": layer_ms, "other_ms": total - sum(layer_ms.values())}
    return out
