"""One engine's latency alone on a core, then sharing that core with a busy process: the scheduler's step.

On a machine with more runnable processes than cores, a run longer than a fraction of the scheduler's time slice
is preempted in most runs, so its median grows by a whole slice (about 4 ms here), while a shorter run's median
does not move. In the 224 sweep, timm MobileNetV3-Large's 7 widest engines measured 6.0-7.1 ms while their node
times summed to 2.4-3.3 ms (load 3-4 on 2 cores): a width-dependent step that no perf model can follow and that a
split-half noise floor does not show. This reproduces it on demand, pinning both processes to one core.

    OMP_NUM_THREADS=1 python bench/preemption_step.py timm:mobilenetv3_large_100 --sizes 224 112
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from itcp_deploy.engines import EngineOptions, get_backend
from itcp_deploy.engines.export import export_onnx
from itcp_deploy.models import create_model

BUSY = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass"


def timings_ms(artifact: Path, runs: int) -> list[float]:
    backend = get_backend("onnxruntime")
    with backend.runner(artifact, EngineOptions(threads=1)) as runner:
        call = runner.prepare(runner.random_feeds())
        for _ in range(20):
            call()
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            call()
            out.append((time.perf_counter() - t0) * 1e3)
    return sorted(out)


def summary(samples: list[float]) -> dict:
    n = len(samples)
    return {"median_ms": round(statistics.median(samples), 3), "p10_ms": round(samples[n // 10], 3),
            "p90_ms": round(samples[9 * n // 10], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 112])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--core", type=int, default=0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})
    with tempfile.TemporaryDirectory() as tmp:
        engines = {}
        for size in args.sizes:
            model = create_model(args.model, num_classes=10).eval()
            onnx_path = export_onnx(model, (1, 3, size, size), Path(tmp) / f"m{size}.onnx")
            engines[size] = get_backend("onnxruntime").builder(onnx_path, Path(tmp) / f"e{size}",
                                                               EngineOptions(threads=1))()
        alone = {size: summary(timings_ms(a, args.runs)) for size, a in engines.items()}
        busy = subprocess.Popen([sys.executable, "-c", BUSY.format(s=600)],
                                preexec_fn=lambda: os.sched_setaffinity(0, {args.core}))
        try:
            shared = {size: summary(timings_ms(a, args.runs)) for size, a in engines.items()}
        finally:
            busy.kill()
    for size in args.sizes:
        print(json.dumps({"model": args.model, "size": size, "alone": alone[size], "sharing_a_core": shared[size],
                          "median_ratio": round(shared[size]["median_ms"] / alone[size]["median_ms"], 2),
                          "load": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
