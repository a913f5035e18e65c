"""How much of a detector's engine pruning can change: the whole engine (resize, network, box decoding, NMS) and
its network alone (raw head outputs), each at full width and with every prunable group at its smallest
candidate, measured interleaved on ONNX Runtime (the project's timing routine, one thread).

    python bench/detector_split.py ssdlite320_mobilenet_v3_large

The whole engine at the smallest widths is the floor no plan goes below: an SLA under it is out of reach.
Random weights (seeded): a detector's NMS cost depends on how many boxes pass its score threshold, so a trained
model's post-processing may cost less (or more) than these.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from itcp_deploy.engines import EngineOptions
from itcp_deploy.engines.build import EngineSpec, build_engine
from itcp_deploy.models import create_model
from itcp_deploy.models.detection import DEPLOY_SIZES
from itcp_deploy.profiling.engine_timing import measure_engines
from itcp_deploy.profiling.timing import TimingConfig
from itcp_deploy.pruning.apply import apply_widths
from itcp_deploy.pruning.space_builder import build_space


class NetworkOnly(nn.Module):
    """A detector's network without post-processing: its raw head outputs."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with self.detector.network_only():
            return self.detector(x)


def split(name: str, out: Path, timing: TimingConfig) -> dict:
    """Median latency (ms) of the four engines of ``name`` and the whole engine's floor as a share of dense."""
    torch.manual_seed(0)
    size = DEPLOY_SIZES[name]
    shape = (1, 3, size, size)
    model = create_model(f"torchvision:{name}").eval()
    space = build_space(model, shape, model_spec=name)
    smallest = apply_widths(model, space, {g.name: min(g.candidates) for g in space.prunable}).eval()
    spec = EngineSpec("onnxruntime", "fp32", EngineOptions(threads=1))
    models = {"whole_dense": model, "whole_min": smallest, "network_dense": NetworkOnly(model),
              "network_min": NetworkOnly(smallest)}
    paths = [build_engine(m, shape, out / name, key, spec).artifact for key, m in models.items()]
    measured = measure_engines("onnxruntime", paths, spec.options, timing)
    ms = {key: e.stats.median_ms for key, e in zip(models, measured.engines, strict=True)}
    return {"model": name, "input": "x".join(map(str, shape)), **{k: round(v, 3) for k, v in ms.items()},
            "post_processing_ms": round(ms["whole_dense"] - ms["network_dense"], 3),
            "floor_over_dense": round(ms["whole_min"] / ms["whole_dense"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # one-stage only: a two-stage head runs on NMS-chosen proposals, so its network alone has no stable outputs
    # to check an export against (Faster R-CNN's failed parity at 9e-3)
    parser.add_argument("models", nargs="+", choices=sorted(n for n in DEPLOY_SIZES if "rcnn" not in n))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs-per-round", type=int, default=10)
    args = parser.parse_args()
    timing = TimingConfig(warmup=5, rounds=args.rounds, runs_per_round=args.runs_per_round)
    out = Path(tempfile.mkdtemp(prefix="detector_split_"))
    for name in args.models:
        print(json.dumps(split(name, out, timing)), flush=True)


if __name__ == "__main__":
    main()
