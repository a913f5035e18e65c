"""Run a documented Python example many times, each in a fresh folder, and record what its run measured.

Example 1 of docs/python_api.md (a quarter-width MobileNet-V2, 1.3x, quick settings) runs in the test suite and
once missed its SLA there: the shipped engine, another build of the loop's accepted plan, measured a few percent
above the loop's engine. This repeats it (``--runs``), one fresh process and folder per run, and appends one JSON
line per run to ``--out``: whether it met its SLA, the final engine's measured / SLA, the loop's accepted round
measured / aim, the final / loop ratio of the same plan, whether the final stage re-solved (``state.json``
retries), wall time and the load average. ``--table`` prints the runs of ``--out`` and their summary.

Example::

    python bench/doc_example_repeat.py --runs 10 --out bench/results/doc_example_repeat.jsonl
    python bench/doc_example_repeat.py --out bench/results/doc_example_repeat.jsonl --table
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "python_api.md"


def example(heading: str) -> str:
    """The first ```python block after ``heading`` (as tests/test_python_api.py runs it)."""
    text = DOC.read_text()
    return re.search(r"```python\n(.*?)```", text[text.index(heading):], re.S).group(1)


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


def one_run(code: str, heading: str) -> dict:
    """Run the example in a fresh folder; the row of what its (only) run folder recorded."""
    with tempfile.TemporaryDirectory(prefix="doc-example-") as tmp:
        load, t0 = os.getloadavg()[0], time.time()
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        row = {"example": heading, "exit": proc.returncode, "wall_s": round(time.time() - t0, 1),
               "load_start": round(load, 2), "load_end": round(os.getloadavg()[0], 2), "commit": commit(),
               "error": proc.stderr.strip().splitlines()[-1] if proc.returncode else ""}
        states = list(Path(tmp).glob("itcp-out/*/state.json"))
        if states:
            row.update(_measured(states[0].parent))
        return row


def _measured(run: Path) -> dict:
    state = json.loads((run / "state.json").read_text())
    report = json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else {}
    loop = state["stages"].get("loop", {})
    final = (report.get("targets") or [{}])[0]
    out = {"retries": len(state.get("retries", [])), "met_sla": report.get("met_sla")}
    if loop and final:
        name = final["name"]
        accepted = loop["rounds"][loop["accepted_round"]]["targets"][0]["measured_ms"]
        out.update(final_over_sla=final["measured_over_sla"], loop_over_aim=accepted / loop["aim_ms"][name],
                   final_over_loop=final["measured_ms"] / accepted, rounds=len(loop["rounds"]))
    return out


def table(rows: list[dict]) -> str:
    lines = ["| run | commit | exit | met | final / SLA | loop / aim | final / loop | re-solved | wall s | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        f = {k: (f"{r[k]:.3f}" if isinstance(r.get(k), float) else "n/a")
             for k in ("final_over_sla", "loop_over_aim", "final_over_loop")}
        lines.append(f"| {i} | {r['commit']} | {r['exit']} | {r.get('met_sla')} | {f['final_over_sla']} | "
                     f"{f['loop_over_aim']} | {f['final_over_loop']} | {r.get('retries', 'n/a')} | {r['wall_s']} | "
                     f"{r['load_start']}-{r['load_end']} |")
    met = sum(1 for r in rows if r.get("met_sla"))
    ratios = sorted(r["final_over_loop"] for r in rows if "final_over_loop" in r)
    lines.append(f"\n{met} of {len(rows)} runs met the SLA; final / loop of the same plan: "
                 + (f"median {ratios[len(ratios) // 2]:.4f}, range {ratios[0]:.4f}-{ratios[-1]:.4f}" if ratios
                    else "n/a"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heading", default="## Example 1", help="the example's heading in docs/python_api.md")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per run (appended)")
    parser.add_argument("--table", action="store_true", help="print the runs of --out instead of running")
    args = parser.parse_args(argv)
    if args.table:
        print(table([json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]))
        return
    code = example(args.heading)
    for i in range(args.runs):
        row = one_run(code, args.heading)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"run {i}: exit {row['exit']}, met {row.get('met_sla')}, final/loop {row.get('final_over_loop')}",
              flush=True)


if __name__ == "__main__":
    main()
