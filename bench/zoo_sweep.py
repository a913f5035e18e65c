"""Zoo sweep: how far beyond CIFAR ResNets the pipeline goes (issue 15).

For every torchvision classifier and a chosen list of timm models (``bench/zoo_models.py``), at 1x3x64x64 (or
the smallest square input the model takes), on synthetic data, each model runs these stages in its own
process, under a per-model cap on CPU time (not wall time: the machine is shared) and on memory (6 GB):

groups -> probe (the dense ONNX Runtime engine: export, build, a few timed runs) -> small profile (6-12
engines) -> fit -> search at 1.3x (taylor scores on synthetic images) -> apply_widths -> export -> ONNX Runtime
parity (pruned engine vs pruned PyTorch model) -> dense and pruned engine measured interleaved. How much
profiling and timing a model gets follows from the probe and the cap (``bench/zoo_effort.py``), so a ViT-H
gets a fair chance at every stage within the same cap as a MobileNet.

One JSON line per model is appended to ``--out`` (pass/fail, failing stage, groups, share of convs pruning
can reach, perf-model held-out error, dense and pruned latency, time, one line of error). A rerun skips
models already recorded; ``--rerun-failed`` retries the failures (after a fix). ``--table`` prints the
markdown table and the pass counts of a results file.

Example::

    nice -n 10 python bench/zoo_sweep.py --out bench/results/zoo_sweep.jsonl --cap-s 120
    python bench/zoo_sweep.py --out bench/results/zoo_sweep.jsonl --table
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.processes import code_commit, die_with_parent  # noqa: E402
from bench.zoo_models import TIMM_MODELS, torchvision_classifiers  # noqa: E402
from bench.zoo_table import compare, print_table  # noqa: E402

STAGE_PREFIX = "ZOO-STAGE "
RESULT_PREFIX = "ZOO-RESULT "
WALL_FACTOR = 6
MEMORY_CAP = 6 << 30
# glibc returns a freed allocation of 16 MiB or more to the system at once. By default its threshold grows
# after each large free, so freed tensors stayed in the heap and the data cap counted them (maxvit_t's
# scoring began with 1.4 GB resident but 2.45 GB of address space, and failed at 5.8 GB). A low threshold
# (128 KiB) maps and zeroes every activation anew: vit_b_16's prune + export took 3.9 CPU-s an engine
# against 2.26 by default, 2.52 at 16 MiB (docs/benchmarks.md section 11 has the commands).
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": str(16 << 20)}


def _records(path: Path) -> dict[str, dict]:
    records: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["model"]] = record
    return records


def _stages_cpu(stderr: str) -> list[tuple[str, float]]:
    """(stage, CPU-seconds at its start) as the child announced them."""
    marks = [line[len(STAGE_PREFIX):].split() for line in stderr.splitlines() if line.startswith(STAGE_PREFIX)]
    return [(m[0], float(m[1])) for m in marks if len(m) == 2]


def _stopped(spec: str, stderr: str, started: float, why: str) -> dict:
    """The record of a child stopped by a cap: the stage it was in, and the CPU-seconds each stage took."""
    marks = _stages_cpu(stderr)
    stage = marks[-1][0] if marks else "start"
    stage_s = {a[0]: round(b[1] - a[1], 1) for a, b in zip(marks, marks[1:], strict=False)}
    return {"model": spec, "status": "fail", "stage": stage, "time_s": round(time.perf_counter() - started, 1),
            "error": f"{why} reached in stage {stage}", "stage_cpu_s": stage_s}


def _error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith(STAGE_PREFIX)]
    return lines[-1][:300] if lines else "no output"


def _limits(cap_s: float) -> Callable[[], None]:
    def limit() -> None:  # in the child, before exec: SIGXCPU at cap_s CPU-seconds, SIGKILL a second later;
        resource.setrlimit(resource.RLIMIT_CPU, (int(cap_s), int(cap_s) + 1))  # allocations past MEMORY_CAP
        resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_CAP, MEMORY_CAP))    # fail (shared 23 GB machine)
        die_with_parent()
    return limit


def run_model(spec: str, cap_s: float, work: Path) -> dict:
    """One model in a child process (``--one``), stopped at ``cap_s`` CPU-seconds (the machine is shared, so a
    wall-clock cap would measure the other users' load), or at ``WALL_FACTOR x cap_s`` wall seconds."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", spec, "--work", str(work), "--cap-s", str(cap_s)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=WALL_FACTOR * cap_s,
                              preexec_fn=_limits(cap_s), env={**os.environ, **CHILD_ENV})
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode() if isinstance(err.stderr, bytes) else (err.stderr or "")
        return _stopped(spec, stderr, started, f"wall-clock cap {WALL_FACTOR * cap_s:.0f} s")
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return _stopped(spec, proc.stderr, started, f"CPU-time cap {cap_s:.0f} s")
    record = _stopped(spec, proc.stderr, started, "")
    return {**record, "error": f"exit {proc.returncode}: {_error_line(proc.stderr)}"}


def sweep(models: list[str], out: Path, cap_s: float, rerun_failed: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    for spec in models:
        previous = _records(out).get(spec)  # re-read: another sweep process may share the file
        if previous is not None and (previous["status"] == "pass" or not rerun_failed):
            continue
        with tempfile.TemporaryDirectory(prefix="zoo-") as work:
            record = run_model(spec, cap_s, Path(work))
        record.update(cap_s=cap_s, commit=code_commit(ROOT), load_end=round(os.getloadavg()[0], 2))
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{spec}: {record['status']} {record.get('stage') or ''} {record.get('error') or ''}", flush=True)


def _default_models() -> list[str]:
    return [f"torchvision:{n}" for n in torchvision_classifiers()] + [f"timm:{n}" for n in TIMM_MODELS]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/zoo_sweep.jsonl", help="results file (--table: comma-separated)")
    p.add_argument("--cap-s", type=float, default=120.0, help="CPU-time cap per model (seconds)")
    p.add_argument("--models", nargs="*", help="specs to run (default: torchvision classifiers + timm list)")
    p.add_argument("--rerun-failed", action="store_true", help="retry models recorded as failed")
    p.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    p.add_argument("--compare", metavar="BEFORE", help="compare --out against an earlier results file and exit")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        from bench.zoo_stages import run_stages

        os.environ.setdefault("OMP_NUM_THREADS", "1")

        def announce(stage: str) -> None:
            print(f"{STAGE_PREFIX}{stage} {time.process_time():.1f}", file=sys.stderr, flush=True)

        record = run_stages(args.one, Path(args.work), announce, args.cap_s)
        print(RESULT_PREFIX + json.dumps(record), flush=True)
        return
    if args.compare:
        print("\n".join(compare(_records(Path(args.compare)), _records(Path(args.out)))))
        return
    if args.table:
        records = [r for path in args.out.split(",") for r in _records(Path(path)).values()]
        print_table(records, _default_models())
        return
    models = args.models or _default_models()
    sweep(models, Path(args.out), args.cap_s, args.rerun_failed)


if __name__ == "__main__":
    main()
