"""How much a new session moves an engine's median, against how much re-measuring within one session does.

A deployed engine runs in a new session, with its own allocation of the weights, so the split-half noise floor
(re-measurement within one session) is not the whole reproducibility of a latency: this builds each model's dense
ONNX Runtime engine once, opens it in ``--sessions`` sessions at once and measures them interleaved
(``measure_interleaved``). One JSON line per model: each session's median, the spread between them
(``session_noise_pct``, what the profiler now adds to its noise floor) and the split-half floor within them.

    OMP_NUM_THREADS=1 python bench/session_noise.py torchvision:alexnet torchvision:resnet18 --sessions 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from pathlib import Path

import torch

from itcp_deploy.engines import EngineOptions, get_backend
from itcp_deploy.engines.build import EngineSpec, build_engine
from itcp_deploy.models import create_model
from itcp_deploy.profiling.timing import TimingConfig, measure_interleaved, noise_pct, session_noise_pct


def sessions_of(spec: str, size: int, sessions: int, timing: TimingConfig) -> dict:
    """The dense engine of ``spec`` at ``size``, measured in ``sessions`` sessions, interleaved."""
    torch.manual_seed(0)
    model = create_model(spec).eval()
    with tempfile.TemporaryDirectory() as tmp:
        built = build_engine(model, (1, 3, size, size), Path(tmp), "dense", EngineSpec())
        backend, load = get_backend("onnxruntime"), os.getloadavg()[0]
        with contextlib.ExitStack() as stack:
            runners = [stack.enter_context(backend.runner(built.artifact, EngineOptions())) for _ in range(sessions)]
            result = measure_interleaved(runners, None, timing)
    medians = [s.median_ms for s in result.stats]
    return {"model": spec, "size": size, "sessions": sessions, "session_medians_ms": [round(m, 4) for m in medians],
            "session_noise_pct": round(session_noise_pct(medians), 2),
            "split_half_noise_pct": round(noise_pct(result.round_medians_ms), 2),
            "max_over_min": round(max(medians) / min(medians), 4), "timing": [timing.rounds, timing.runs_per_round],
            "load": [round(load, 2), round(os.getloadavg()[0], 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs-per-round", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="append the JSON lines here too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for spec in args.models:
        row = sessions_of(spec, args.size, args.sessions, TimingConfig(warmup=10, rounds=args.rounds,
                                                                        runs_per_round=args.runs_per_round))
        print(json.dumps(row), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
