"""Zoo sweep at the shape people deploy (issue 24): 27 CNNs at 1x3x224x224 through the real pipeline.

Each model runs in its own process as ``itcp-deploy profile-engines MODEL --input-shape 1x3x224x224 --speedup 1.5
--epochs 0 --data synthetic -o OUT`` (the command that goes on, past the profile, through the same pipeline as
``run``: profile -> fit -> scores -> open-loop plan -> closed loop -> final engine; no forced fit), with shorter
profile timing than the default (``PROFILE_TIMING``: on a shared two-core machine the defaults would take a day
for the 27). One JSON line per model is appended to ``--out``, derived from what the run wrote into its output
folder (``report.json``, ``profile.json``, ``perf_model.json``): builds, noise floor, held-out and FLOPs-model
error, whether the fit was above its rejection threshold, the first plan's measured / predicted latency and its
measured / SLA, rounds, the final measured / SLA, wall time per stage, the code commit and the load average.

A rerun skips models already recorded under the same ``--label`` (``--rerun-failed``: unless their last row
failed); ``--table`` prints the markdown table and the
counts against the issue's bars.

Example::

    mkdir /tmp/code && git archive HEAD | tar -x -C /tmp/code && git rev-parse --short HEAD > /tmp/code/COMMIT
    nohup python bench/zoo_224.py --code /tmp/code --out bench/results/zoo_224.jsonl > /tmp/zoo_224.log 2>&1 &
    python bench/zoo_224.py --out bench/results/zoo_224.jsonl --table
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.processes import code_commit, die_with_parent  # noqa: E402

# cheapest first, so that an unfinished sweep has the most rows
MODELS = [f"torchvision:{n}" for n in (
    "mobilenet_v3_small", "shufflenet_v2_x1_0", "squeezenet1_1", "mnasnet1_0", "mobilenet_v2", "regnet_x_400mf",
    "regnet_y_400mf", "mobilenet_v3_large", "efficientnet_b0", "alexnet", "resnet18", "efficientnet_b1",
    "googlenet", "efficientnet_b2", "regnet_y_1_6gf", "resnet34", "densenet121", "convnext_tiny", "resnet50",
    "efficientnet_v2_s", "resnext50_32x4d", "vgg11_bn", "vgg16_bn")] + [f"timm:{n}" for n in (
    "mobilenetv3_large_100", "efficientnet_b0", "convnext_atto", "resnet50d")]
MODELS = MODELS[:19] + MODELS[23:] + MODELS[19:23]  # the timm four before the heaviest torchvision ones
SHAPE = "1x3x224x224"
SPEEDUP = 1.5
PROFILE_TIMING = ["--rounds", "10", "--runs-per-round", "20", "--layer-runs", "100"]
WALL_CAP_S = 3600


def command(spec: str, out: Path, cache: Path, data: str = "synthetic") -> list[str]:
    main = "import sys; from itcp_deploy.cli import main; sys.exit(main())"
    return [sys.executable, "-c", main, "profile-engines", spec,
            "--input-shape", SHAPE, "--speedup", str(SPEEDUP), "--epochs", "0", "--data", data, "-o", str(out),
            "--cache",
            str(cache), *PROFILE_TIMING, "--json"]


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def row_from_folder(out: Path) -> dict:
    """The issue's fields, from what the run wrote into ``out``."""
    report, profile, perf = _load(out / "report.json"), _load(out / "profile.json"), _load(out / "perf_model.json")
    fit = perf.get("report") or {}
    rounds = report.get("rounds") or []
    row = {"builds": profile.get("builds"), "noise_pct": profile.get("noise_pct"),
           "perf_err_pct": fit.get("mape_pct"), "perf_max_err_pct": fit.get("max_pct"),
           "flops_err_pct": fit.get("flops_mape_pct"), "bar_pct": fit.get("bar_pct"),
           "threshold_pct": fit.get("threshold_pct"), "fit_rejected": fit.get("rejected"),
           "n_validation": fit.get("n_validation"), "rounds": len(rounds) or None,
           "final_over_sla": report.get("measured_over_sla"), "met_sla": report.get("met_sla"),
           "stage_wall_s": {k: round(v, 1) for k, v in (report.get("wall_s") or {}).items()}}
    target = (report.get("targets") or [{}])[0]  # the report's own row says how the model did on the first plan
    for key in ("first_plan_measured_over_predicted", "first_plan_over_sla", "probe_measured_over_predicted",
                "probes", "search_bias"):
        row[key] = target.get(key)
    profiled = [v for v in (_load(out / "state.json").get("stages") or {}).get("profile", {}).values()
                if isinstance(v, dict)]  # the profile stage's own record, per target
    row["session_noise_pct"] = profiled[0].get("session_noise_pct") if profiled else None
    return row


@dataclass(frozen=True)
class SweepSettings:
    """What every run of one sweep shares: its label, profiling cache, code checkout, ``--data``, where to keep
    each run's small files, and the wall-time cap per model (the big models at 224 need more than an hour on a
    loaded two-core machine: ConvNeXt-Tiny's loop alone took 30 minutes at load 4)."""

    label: str
    cache: Path
    code: Path
    data: str = "synthetic"
    keep: Path | None = None
    wall_cap_s: float = WALL_CAP_S


def run_model(spec: str, work: Path, settings: SweepSettings) -> dict:
    out, code = work / "out", settings.code
    cmd = command(spec, out, settings.cache, settings.data)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=settings.wall_cap_s, env=env, cwd=work,
                              preexec_fn=die_with_parent)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = "timeout", (e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or "")
    lines = [ln.strip() for ln in err.splitlines() if ln.strip() and "Warning" not in ln]
    row = {"model": spec, "label": settings.label, "input_shape": SHAPE, "speedup": SPEEDUP, "exit": rc,
           "status": "pass" if rc in (0, 1) and (out / "report.json").exists() else "fail",
           "error": lines[-1][:300] if rc != 0 and lines else "", "commit": code_commit(code),
           "wall_s": round(time.perf_counter() - started, 1), "load_start": round(load, 2),
           "load_end": round(os.getloadavg()[0], 2),
           "command": "itcp-deploy " + " ".join(cmd[3:]).replace(str(out), "OUT")}
    row.update(row_from_folder(out))
    return row


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


KEPT = ("profile.json", "perf_model.json", "space.json", "state.json", "report.json", "report.md")


def keep_folder(work: Path, keep: Path | None) -> None:
    """The run's small files (profile, perf model, state, report) into ``keep``, so that a bad fit can be
    explained afterwards (``itcp-deploy fit KEEP/profile.json --explain``) without rerunning the model."""
    if keep is None:
        return
    keep.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (work / "out" / name).is_file():
            shutil.copy2(work / "out" / name, keep / name)


def sweep(models: list[str], out: Path, settings: SweepSettings, rerun_failed: bool = False) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    label, keep = settings.label, settings.keep
    for spec in models:
        done = [r for r in _records(out) if r["model"] == spec and r.get("label") == label]
        if done and (done[-1]["status"] == "pass" or not rerun_failed):
            continue
        with tempfile.TemporaryDirectory(prefix="zoo224-") as work:
            row = run_model(spec, Path(work), settings)
            keep_folder(Path(work), keep / label / spec.replace(":", "_") if keep else None)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{spec}: {row['status']} builds {row.get('builds')} err {row.get('perf_err_pct')} "
              f"first/sla {row.get('first_plan_over_sla')} met {row.get('met_sla')} {row['error']}", flush=True)


def _f(v, spec=".2f") -> str:
    return "" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def table(records: list[dict], labels: list[str]) -> None:
    """The last row per model of the first of ``labels`` that has one (newest code first)."""
    rows: dict[str, dict] = {}
    for label in reversed(labels):
        rows.update({r["model"]: r for r in records if r.get("label") == label})
    print("| model | label | builds | noise % | held-out % (max) | FLOPs % | bar % | first meas/pred | first /SLA | "
          "rounds | final /SLA | met | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows.values():
        print(f"| {r['model']} | {r['label']} | {_f(r.get('builds'))} | {_f(r.get('noise_pct'))} | "
              f"{_f(r.get('perf_err_pct'))} "
              f"({_f(r.get('perf_max_err_pct'), '.1f')}) | {_f(r.get('flops_err_pct'))} | {_f(r.get('bar_pct'))} | "
              f"{_f(r.get('first_plan_measured_over_predicted'), '.3f')} | {_f(r.get('first_plan_over_sla'), '.3f')} "
              f"| {_f(r.get('rounds'))} | {_f(r.get('final_over_sla'), '.3f')} | {_f(r.get('met_sla'))} | "
              f"{_f(r.get('wall_s'), '.0f')} |")
    print()
    for line in bar_counts(list(rows.values())):
        print(line)


def bar_counts(rows: list[dict]) -> list[str]:
    """Each of the issue's bars: how many rows meet it, of the rows that have what it needs."""
    def count(name: str, ok, need: str) -> str:
        have = [r for r in rows if r.get(need) is not None]
        return f"- {name}: {sum(bool(ok(r)) for r in have)} of {len(have)} (of {len(rows)} models run)"

    builds = [r["builds"] for r in rows if r.get("builds")]
    return [
        count("P1 held-out <= max(1.5 x noise, 2%) (bar: >= 90%)",
              lambda r: r["perf_err_pct"] <= max(1.5 * r["noise_pct"], 2.0), "perf_err_pct"),
        count("held-out below the FLOPs model's (bar: every model)",
              lambda r: r["perf_err_pct"] < r["flops_err_pct"], "perf_err_pct"),
        count("first plan within [0.90, 1.00] of the SLA (bar: >= 80%)",
              lambda r: 0.90 <= r["first_plan_over_sla"] <= 1.00, "first_plan_over_sla"),
        count("first plan measured / predicted within 3% (bar: >= 80%)",
              lambda r: abs(r["first_plan_measured_over_predicted"] - 1) <= 0.03, "first_plan_measured_over_predicted"),
        count("closed loop meets the SLA in <= 2 rounds (bar: >= 90%)",
              lambda r: r["met_sla"] and r["rounds"] <= 2, "rounds"),
        count("fit above its rejection threshold (went on with the closed loop)", lambda r: r["fit_rejected"],
              "fit_rejected"),
        f"- median builds (bar: <= 16): {statistics.median(builds) if builds else 'n/a'} (of {len(builds)})",
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/zoo_224.jsonl")
    p.add_argument("--models", nargs="*", help="specs to run (default: the issue's 27)")
    p.add_argument("--label", default="adaptive", help="rows of one code variant (a rerun skips its models)")
    p.add_argument("--cache", help="profiling cache (default: a folder per label in the temp directory)")
    p.add_argument("--code", default=str(ROOT), help="the itcp_deploy checkout to run (e.g. main's, for 'before' rows)")
    p.add_argument("--table", nargs="*", metavar="LABEL", help="print the markdown table of --out: per model, the "
                   "last row of the first LABEL that has one (default: --label)")
    p.add_argument("--rerun-failed", action="store_true", help="run again the models whose last row failed")
    p.add_argument("--data", default="synthetic", help="--data of each run (synthetic images are 32x32 unless "
                   "synthetic:size=224: AlexNet's pools need at least 63x63 for its scores)")
    p.add_argument("--keep", help="copy each run's profile, perf model, state and report under KEEP/LABEL/MODEL")
    p.add_argument("--wall-cap", type=float, default=WALL_CAP_S, help="seconds a model may run (then: timeout row)")
    args = p.parse_args(argv)
    if args.table is not None:
        table(_records(Path(args.out)), args.table or [args.label])
        return
    cache = Path(args.cache or Path(tempfile.gettempdir()) / f"zoo224-engines-{args.label}")
    settings = SweepSettings(args.label, cache, Path(args.code), args.data,
                             Path(args.keep).resolve() if args.keep else None, args.wall_cap)
    sweep(args.models or MODELS, Path(args.out).resolve(), settings, args.rerun_failed)


if __name__ == "__main__":
    main()
