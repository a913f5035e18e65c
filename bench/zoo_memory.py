"""Resident memory of one zoo model's profile, engine by engine (why VGG failed the sweep's 6 GB cap).

Builds the model's pruning space, then profiles it at the sweep's floor effort (``LEVELS[-1]`` of
``bench/zoo_effort.py``: 6 engines) and prints the process's resident and data memory (``/proc/self/status``)
after the space and after each engine's build, latency and per-layer measurement. Memory that grows by about
one pruned copy per engine is memory nothing releases until a later garbage collection.

Example::

    nice -n 10 python bench/zoo_memory.py torchvision:vgg11
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def memory_mb() -> dict[str, int]:
    """VmRSS (resident), VmHWM (peak resident) and VmData (what RLIMIT_DATA caps), in MB."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "VmData"):
            found[key] = int(value.split()[0]) // 1024
    return found


def _report_after(cls, method: str) -> None:
    original = getattr(cls, method)

    def reported(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        print(f"after {method}: {memory_mb()}", flush=True)
        return result

    setattr(cls, method, reported)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model spec, e.g. torchvision:vgg11")
    p.add_argument("--size", type=int, default=64, help="square input size")
    args = p.parse_args(argv)
    from bench.zoo_effort import LEVELS
    from bench.zoo_stages import _profile
    from itcp_deploy.models import create_model
    from itcp_deploy.profiling import profiler
    from itcp_deploy.pruning import build_space

    for method in ("build", "measure_latency", "measure_layers"):
        _report_after(profiler._Run, method)
    model = create_model(args.model, num_classes=10).eval()
    space = build_space(model, (1, 3, args.size, args.size), model_spec=args.model)
    print(f"after build_space: {memory_mb()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="zoo-memory-") as work:
        _profile(model, space, Path(work), LEVELS[-1])
    print(f"after profile: {memory_mb()}", flush=True)


if __name__ == "__main__":
    main()
