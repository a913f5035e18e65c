"""Do two engines of one plan measure alike? The loop's engine of its accepted round and the run's final engine
hold the same widths (the final one finetuned); each is measured against the dense engine, interleaved, in
``--sessions`` fresh processes' worth of sessions, and a third engine (the final graph carrying the round's
weights) says whether the weights or the file's layout moves the latency.

    python bench/same_plan_engines.py RUN_DIR --sessions 6

RUN_DIR: a one-target ``run``/``prune()`` output folder on ONNX Runtime. Prints one JSON line per session and a
summary (median ratio to dense, spread across sessions, final / round). Why it exists: Example 1 of
docs/python_api.md (a 55 us MobileNet-V2) shipped a final engine 1-3.5% slower than the loop's engine of its
plan, and failed CI at 1.004x its SLA (docs/benchmarks.md section 18).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import onnx
from onnx import numpy_helper

from itcp_deploy.engines import EngineOptions
from itcp_deploy.profiling.engine_timing import measure_engines
from itcp_deploy.profiling.timing import TimingConfig


def engines_of(run_dir: Path) -> dict[str, Path]:
    """The dense, final and accepted-round ONNX Runtime engines of a one-target run folder."""
    state = json.loads((run_dir / "state.json").read_text())
    accepted = state["stages"]["loop"]["accepted_round"]
    found = {"dense": run_dir / "engines" / "dense" / "model.opt.onnx",
             "final": run_dir / "engines" / "model" / "model.opt.onnx",
             "round": run_dir / "rounds" / "engines" / f"round{accepted}" / "model.opt.onnx"}
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"not a finished one-target ONNX Runtime run folder: missing {', '.join(missing)}")
    return found


def with_weights_of(graph: Path, weights: Path, dst: Path) -> Path:
    """``graph``'s file with ``weights``' initializer values, matched by node and input position (the two
    optimised graphs have the same nodes, their initializers other names and order)."""
    a, b = onnx.load(graph), onnx.load(weights)
    inits_a = {i.name: i for i in a.graph.initializer}
    inits_b = {i.name: i for i in b.graph.initializer}
    for node_a, node_b in zip(a.graph.node, b.graph.node, strict=True):
        for name_a, name_b in zip(node_a.input, node_b.input, strict=False):
            if name_a in inits_a and name_b in inits_b:
                inits_a[name_a].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits_b[name_b]), name_a))
    onnx.save(a, dst)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs-per-round", type=int, default=25)
    args = parser.parse_args()
    found = engines_of(args.run_dir)
    timing = TimingConfig(warmup=20, rounds=args.rounds, runs_per_round=args.runs_per_round)
    with tempfile.TemporaryDirectory() as tmp:
        swapped = with_weights_of(found["final"], found["round"], Path(tmp) / "final_graph_round_weights.onnx")
        names, paths = ["final", "round", "final graph, round weights"], [found["final"], found["round"], swapped]
        ratios: dict[str, list[float]] = {n: [] for n in names}
        for s in range(args.sessions):
            measured = measure_engines("onnxruntime", paths, EngineOptions(threads=1), timing,
                                       reference=found["dense"])
            for n, e in zip(names, measured.engines, strict=True):
                ratios[n].append(float(e.ratio))
            print(json.dumps({"session": s, **{n: round(r[-1], 4) for n, r in ratios.items()}}))
    summary = {n: {"median": round(statistics.median(r), 4), "min": round(min(r), 4), "max": round(max(r), 4)}
               for n, r in ratios.items()}
    paired = [f / r for f, r in zip(ratios["final"], ratios["round"], strict=True)]
    print(json.dumps({"summary": summary, "final_over_round_median": round(statistics.median(paired), 4),
                      "final_over_round_range": [round(min(paired), 4), round(max(paired), 4)]}))


if __name__ == "__main__":
    main()
