"""A detector's engine at one plan, built two ways, measured interleaved with its dense engine: a plain pruned
copy (what the profile's design engines are) and the copy as it ships (the one-shot recipe: channels kept by
importance, least-squares compensation, BatchNorm re-estimated on synthetic detection images). Where the two
measure alike, the profile predicts what ships; where they do not, the engine's time follows its weights.

    python bench/shipped_vs_plain.py fasterrcnn_mobilenet_v3_large_320_fpn --fraction 0.75

``--fraction``: every prunable group at that fraction of its candidate widths (0 the narrowest, 1 full).
Random weights (seeded), ONNX Runtime CPU, one thread.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from itcp_deploy.data.detection import detection_batches
from itcp_deploy.engines import EngineOptions
from itcp_deploy.engines.build import EngineSpec, build_engine
from itcp_deploy.models import create_model
from itcp_deploy.models.detection import DEPLOY_SIZES
from itcp_deploy.profiling.engine_timing import measure_engines
from itcp_deploy.profiling.timing import TimingConfig
from itcp_deploy.pruning import apply_widths, build_space, channel_importance
from itcp_deploy.pruning.compensate import OneShot, prune_one_shot


def compare(name: str, fraction: float, out: Path, timing: TimingConfig) -> dict:
    """Latency ratios to dense of the plain and the shipped copy at one plan, and the one-shot recipe's time."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    size = DEPLOY_SIZES[name]
    shape = (1, 3, size, size)
    model = create_model(f"torchvision:{name}").eval()
    space = build_space(model, shape, model_spec=name)
    widths = {g.name: g.candidates[int(fraction * (len(g.candidates) - 1))] for g in space.prunable}
    importance = channel_importance(model, space, "l1")
    plain = apply_widths(model, space, widths, importance=importance).eval()
    batches = detection_batches(20, 4, size)
    t0 = time.perf_counter()
    shipped, _ = prune_one_shot(model, space, widths, importance, OneShot(batches[:4], batches, 20, True))
    recipe_s = time.perf_counter() - t0
    spec = EngineSpec("onnxruntime", "fp32", EngineOptions(threads=1))
    paths = [build_engine(m, shape, out, key, spec).artifact
             for key, m in {"dense": model, "plain": plain, "shipped": shipped.eval()}.items()]
    measured = measure_engines("onnxruntime", paths[1:], spec.options, timing, reference=paths[0])
    plain_e, shipped_e = measured.engines
    return {"model": name, "fraction": fraction, "dense_ms": round(measured.reference.median_ms, 3),
            "plain_over_dense": round(plain_e.ratio, 4), "shipped_over_dense": round(shipped_e.ratio, 4),
            "recipe_s": round(recipe_s, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=sorted(DEPLOY_SIZES))
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--runs-per-round", type=int, default=10)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(compare(args.model, args.fraction, Path(tmp),
                                 TimingConfig(rounds=args.rounds, runs_per_round=args.runs_per_round))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
