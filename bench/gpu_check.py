"""Issue 28's GPU check: one command that measures the product on a CUDA machine in at most 7.5 minutes.

    python bench/gpu_check.py --out OUT                 # on the GPU machine (docs/gpu.md gives the device call)
    python bench/gpu_check.py --device cpu --out OUT    # the dry run: tiny shapes, about a minute (a test)

The parts, each in its own process with a time cap, under one global budget (``--budget-s``): a part that fails
records its one-line error and the next part runs; a part that no longer fits is skipped with a note.

1. ``staircase``: one 3x3 conv at output widths 1..256 on 64 channels at 56x56, batch 1 and 32, fp16 and fp32,
   ``torch`` backend with CUDA graphs (:mod:`itcp_deploy.profiling.staircase`): where latency steps, and the
   block ``channel_block()`` finds;
2. ``profile:<model>``: ``itcp-deploy profile-engines`` + ``itcp-deploy fit`` (torch backend on the device):
   the held-out error against the noise floor and against FLOPs-linear;
3. ``run:<model>``: :func:`itcp_deploy.prune`, what ``itcp-deploy run --epochs 0`` runs (the CLI's ``run`` has no
   ``--device``), at 1.5x and 2x with random weights and synthetic data, reusing part 2's profile and perf
   model: measured/SLA and the closed loop's rounds.

fp16 is asked for first; where the product refuses it (the torch backend profiles fp32 only today) a part records
the refusal and measures at fp32. OUT gets ``summary.json`` (every number, the issue's bars evaluated) and one
PNG per staircase; engines, caches and profiles go to ``--work``, so that OUT stays within what the device tool
brings back (8 files, 2 folders deep).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from gpu_summary import environment, fit_bar, markdown, run_bar, why_not

CLI = "import sys; from itcp_deploy.cli import main; sys.exit(main(sys.argv[1:]))"
MIN_PART_S = 20.0  # a part is not started with less time left than this


@dataclass(frozen=True)
class Setup:
    """What one device measures: the staircase conv, the models (``SPEC@NxCxHxW``), the profile-engines flags,
    the speed-ups, the closed loop's timing (warm-up, rounds, runs per round) and each part kind's cap in s."""

    stair: tuple[int, int, int]  # in_channels, hw, max_width
    stair_batches: tuple[int, ...]
    stair_timing: tuple[int, int, int]
    models: tuple[str, ...]
    profile_flags: tuple[str, ...]
    speedups: tuple[float, ...]
    loop_timing: tuple[int, int, int]
    final_timing: tuple[int, int, int]
    loader_batch: int
    max_rounds: int  # the closed loop's (the product's default on the GPU; fewer in the dry run)
    caps: tuple[tuple[str, float], ...]
    budget_s: float


SETUPS = {
    "cuda": Setup(
        stair=(64, 56, 256), stair_batches=(1, 32), stair_timing=(5, 8, 10),
        models=("cifar_resnet56@1x3x32x32", "torchvision:resnet50@32x3x224x224"),
        profile_flags=("--max-builds", "16", "--holdout", "6", "--rounds", "10", "--runs-per-round", "20"),
        speedups=(1.5, 2.0), loop_timing=(20, 10, 30), final_timing=(20, 10, 50), loader_batch=16, max_rounds=4,
        caps=(("staircase", 70.0), ("profile", 130.0), ("run", 170.0)), budget_s=420.0),
    "cpu": Setup(  # the dry run: the same code paths at toy sizes
        stair=(4, 8, 16), stair_batches=(1, 2), stair_timing=(1, 2, 3),
        models=("cifar_resnet20@1x3x16x16",),
        profile_flags=("--max-builds", "4", "--holdout", "1", "--rounds", "2", "--runs-per-round", "3"),
        speedups=(2.0,), loop_timing=(1, 2, 3), final_timing=(1, 2, 3), loader_batch=8, max_rounds=2,
        caps=(("staircase", 60.0), ("profile", 60.0), ("run", 90.0)), budget_s=240.0),
}
PRECISIONS = ("fp16", "fp32")


def label(model: str) -> str:
    """``torchvision:resnet50@32x3x224x224`` -> ``resnet50``."""
    return model.partition("@")[0].rpartition(":")[2]


def shape_of(model: str) -> tuple[int, ...]:
    return tuple(int(d) for d in model.partition("@")[2].split("x"))


def one_line(err: BaseException | str) -> str:
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return (text.strip().splitlines() or ["(no message)"])[-1][:400]


# ---------------------------------------------------------------- part 1: the staircase


def steps_at(widths: list[int], ms: list[float], top: int = 8) -> dict:
    """The widths after which latency jumps most (w -> w+1), and how many of them are multiples of 8/16/32/64."""
    jumps = sorted(range(len(ms) - 1), key=lambda i: ms[i + 1] - ms[i], reverse=True)[:top]
    after = sorted(widths[i] for i in jumps)
    return {"largest_jumps_after": after, **{f"on_multiple_of_{b}": sum(w % b == 0 for w in after)
                                             for b in (8, 16, 32, 64)}}


def part_staircase(setup: Setup, device: str, work: Path, out: Path, result: dict) -> None:
    from itcp_deploy.engines.device import block_from_staircase, channel_block
    from itcp_deploy.profiling.staircase import StaircaseConfig, staircase
    from itcp_deploy.profiling.timing import TimingConfig

    cin, hw, max_width = setup.stair
    for batch in setup.stair_batches:
        for precision in PRECISIONS:
            name = f"staircase_b{batch}_{precision}"
            try:
                config = StaircaseConfig(in_channels=cin, hw=hw, max_width=max_width, backend="torch", batch=batch,
                                         device=device, precision=precision, timing=TimingConfig(*setup.stair_timing))
                points, png = staircase(config, work / f"{name}.png")
                shutil.copyfile(png, out / png.name)
                widths, ms = [p.width for p in points], [p.median_ms for p in points]
                found = block_from_staircase(widths, ms)
                result[name] = {"png": png.name, "block_from_staircase": found,
                                "channel_block": channel_block(list(zip(widths, ms, strict=True))),
                                "channel_block_from": "this staircase" if found else "the host CPU's ISA (no steps)",
                                **steps_at(widths, ms), "median_ms": ms, "p90_ms": [p.p90_ms for p in points]}
            except Exception as err:  # one failed configuration (e.g. out of memory) keeps the others
                result[name] = {"error": one_line(err)}
            save(work, "staircase", result)


# ---------------------------------------------------------------- part 2: profile-engines + fit


def cli(*args: str) -> tuple[int, str]:
    """Run ``itcp-deploy ARGS`` (no console script needed): its output streams to the log (a part stopped at
    its cap still shows how far it got); returns the exit code and its last ``error:`` line (else last line)."""
    child = subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    last = error = ""
    for line in child.stdout:
        print(line, end="", flush=True)
        last = line.strip() or last
        error = line.strip() if line.startswith("error:") else error
    return child.wait(), one_line(error or last)


def part_profile(setup: Setup, device: str, work: Path, model: str, result: dict) -> None:
    folder = work / label(model)
    for precision in PRECISIONS:  # fp16 first; fp32 where the product refuses fp16
        profile, perf = folder / f"profile_{precision}.json", folder / f"perf_model_{precision}.json"
        rc, err = cli("profile-engines", model.partition("@")[0], "--input-shape", model.partition("@")[2],
                      "--backend", "torch", "--device", device, "--precision", precision, *setup.profile_flags,
                      "--cache", str(folder / "cache"), "-o", str(profile))
        if rc != 0:
            result[f"error_{precision}"] = f"profile-engines exit {rc}: {err}"
            continue
        rc, err = cli("fit", str(profile), "-o", str(perf), "--force")
        if rc != 0:
            result[f"error_{precision}"] = f"fit exit {rc}: {err}"
            continue
        meta = json.loads(profile.read_text())
        report = json.loads(perf.read_text())["report"]
        result.update(precision=precision, profile=str(profile), perf_model=str(perf), fit=report,
                      engines=len(meta["engines"]), profile_wall_s=meta["wall_s"], device=meta["device"])
        return


# ---------------------------------------------------------------- part 3: the closed loop (run --epochs 0)


def synthetic_batches(shape: tuple[int, ...], batch: int, n: int, classes: int) -> list:
    import torch

    g = torch.Generator().manual_seed(0)
    return [(torch.randn((batch, *shape[1:]), generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


def prune_once(setup: Setup, device: str, work: Path, model: str, speedup: float, precision: str) -> dict:
    """``itcp_deploy.prune`` at ``speedup``: the run's report, reduced to what the bars read."""
    import torch

    import itcp_deploy
    from itcp_deploy.engines.base import EngineOptions
    from itcp_deploy.models import create_model
    from itcp_deploy.pipeline.config import FinetuneRecipe, LoopSettings, ProfileSettings
    from itcp_deploy.profiling.timing import TimingConfig

    folder, shape = work / label(model), shape_of(model)
    net = create_model(model.partition("@")[0]).eval()
    classes = net(torch.zeros(2, *shape[1:])).shape[1]
    reuse = {k: str(p) if (p := folder / f"{k}_{precision}.json").exists() else None
             for k in ("profile", "perf_model")}
    flags = dict(zip(setup.profile_flags[0::2], setup.profile_flags[1::2], strict=True))
    options = itcp_deploy.PruneOptions(
        engine=EngineOptions(device=device), score_samples=2 * setup.loader_batch, log=print,
        recipe=FinetuneRecipe(epochs=0, train_subset=None, bn_batches=2),
        profile=ProfileSettings(cache_dir=str(folder / "cache"), profile_path=reuse["profile"],
                                perf_model_path=reuse["perf_model"], max_builds=int(flags["--max-builds"]),
                                holdout=int(flags["--holdout"]), force_fit=True,
                                timing=TimingConfig(20, int(flags["--rounds"]), int(flags["--runs-per-round"]))),
        loop=LoopSettings(timing=TimingConfig(*setup.loop_timing), final_timing=TimingConfig(*setup.final_timing),
                          max_timing_rounds=2 * setup.loop_timing[1], max_rounds=setup.max_rounds))
    result = itcp_deploy.prune(net, torch.zeros(shape), speedup=speedup, backend="torch", precision=precision,
                               score_loader=synthetic_batches(shape, setup.loader_batch, 2, classes), epochs=0,
                               out_dir=folder / f"run_{speedup:g}x_{precision}", options=options)
    r = result.report
    return {"precision": precision, "sla_ms": r.sla_ms, "dense_ms": r.dense_latency_ms,
            "final_ms": r.final_latency_ms, "predicted_ms": r.predicted_latency_ms, "met_sla": r.met_sla,
            "measured_over_sla": r.measured_over_sla, "final_over_dense": r.final_over_dense,
            "rounds": len(r.rounds), "round_records": r.rounds, "notes": r.notes, "wall_s": r.wall_s}


def part_run(setup: Setup, device: str, work: Path, model: str, result: dict) -> None:
    done = load(work, f"profile:{label(model)}")
    order = [done["precision"]] if "precision" in done else list(PRECISIONS)
    for speedup in setup.speedups:
        key = f"{speedup:g}x"
        for precision in order:
            try:
                result[key] = prune_once(setup, device, work, model, speedup, precision)
                break
            except Exception as err:
                traceback.print_exc()
                result[f"{key}_error_{precision}"] = one_line(err)
        save(work, f"run:{label(model)}", result)


# ---------------------------------------------------------------- orchestration


def part_file(work: Path, part: str) -> Path:
    return work / f"part_{part.replace(':', '_')}.json"


def save(work: Path, part: str, result: dict) -> None:
    """A part's results so far (a part killed at its cap keeps what it finished)."""
    part_file(work, part).write_text(json.dumps(result, indent=1, default=str))


def load(work: Path, part: str) -> dict:
    path = part_file(work, part)
    return json.loads(path.read_text()) if path.exists() else {}


def part_names(setup: Setup) -> list[str]:
    """staircase, then per model: its profile and fit, then its runs."""
    return ["staircase"] + [f"{kind}:{label(m)}" for m in setup.models for kind in ("profile", "run")]


def run_part(part: str, setup: Setup, device: str, work: Path, out: Path) -> None:
    """In the child process: one part, its results saved as it goes; an exception becomes its error line."""
    result: dict = {}
    kind, _, name = part.partition(":")
    try:
        if kind == "staircase":
            part_staircase(setup, device, work, out, result)
        else:
            model = next(m for m in setup.models if label(m) == name)
            {"profile": part_profile, "run": part_run}[kind](setup, device, work, model, result)
    except Exception as err:
        traceback.print_exc()
        result["error"] = one_line(err)
    save(work, part, result)


def spawn(part: str, args: argparse.Namespace, timeout: float) -> str | None:
    """Run one part as a child process (its own session, so a cap kills its subprocesses too); an error line
    when it did not end normally."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--device", args.device, "--out", args.out,
           "--work", args.work, *sum((["--model", m] for m in args.model or ()), [])]
    child = subprocess.Popen(cmd, start_new_session=True)
    try:
        rc = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        return f"stopped at its cap of {timeout:.0f} s (results up to then are kept)"
    return None if rc == 0 else f"exit code {rc}"


def bars(setup: Setup, parts: dict) -> dict:
    """The issue's bars on what was measured (``pass: None``: not measured, with why)."""
    stair = parts.get("staircase", {})
    pngs = [v["png"] for k, v in stair.items() if isinstance(v, dict) and "png" in v]
    out = {"staircase_plotted": {"pass": len(pngs) == len(setup.stair_batches) * len(PRECISIONS), "pngs": pngs}}
    for model in setup.models:
        name = label(model)
        out[f"fit:{name}"] = fit_bar(parts.get(f"profile:{name}", {}))
        run = parts.get(f"run:{name}", {})
        for speedup in setup.speedups:
            key = f"{speedup:g}x"
            out[f"run:{name}:{key}"] = run_bar(run[key]) if key in run else {"pass": None, "why": why_not(run)}
    out["all_pass"] = all(b["pass"] is True for b in out.values())
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=sorted(SETUPS), default="cuda", help="cuda (the check) or cpu (dry run)")
    p.add_argument("--out", help="summary.json and the staircase PNGs")
    p.add_argument("--markdown", metavar="SUMMARY", help="print a summary.json's tables for docs/benchmarks.md")
    p.add_argument("--work", default=None, help="engines, caches, profiles (default: OUT/../gpu_check_work)")
    p.add_argument("--budget-s", type=float, default=None, help="global time budget (default per device)")
    p.add_argument("--parts", default=None, help="comma-separated part names to run (a rerun of some)")
    p.add_argument("--model", action="append", help="SPEC@NxCxHxW instead of the device's models; repeatable")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)  # internal: run one part in this process
    args = p.parse_args(argv)
    if not (args.out or args.markdown):
        p.error("--out is required (or --markdown SUMMARY)")
    args.work = args.work or (args.out and str(Path(args.out).resolve().parent / "gpu_check_work"))
    return args


def chosen_parts(args: argparse.Namespace, setup: Setup) -> list[str]:
    """``--parts`` (checked against this setup's parts), or all of them in order."""
    names = part_names(setup)
    wanted = [p.strip() for p in args.parts.split(",")] if args.parts else names
    if unknown := [p for p in wanted if p not in names]:
        print(f"error: unknown part(s) {unknown}. Fix: use some of {names}", file=sys.stderr)
        raise SystemExit(2)
    return wanted


def write_summary(out: Path, summary: dict) -> None:
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    os.replace(tmp, out / "summary.json")


def orchestrate(args: argparse.Namespace, setup: Setup) -> dict:
    """Every part in turn, each in its own process under its cap and the global budget; summary.json is
    rewritten after each part, so a killed check still leaves what it measured."""
    out, work = Path(args.out), Path(args.work)
    budget = setup.budget_s if args.budget_s is None else args.budget_s
    caps = dict(setup.caps)
    wanted = chosen_parts(args, setup)
    t0 = time.monotonic()
    summary = {"device_kind": args.device, "env": environment(args.device), "setup": asdict(setup),
               "budget_s": budget, "parts": {}}
    for part in wanted:
        left = budget - (time.monotonic() - t0)
        if left < MIN_PART_S:
            summary["parts"][part] = {"skipped": f"time budget: {max(left, 0):.0f} s left of {budget:.0f} s"}
            continue
        print(f"=== {part} (cap {min(caps[part.partition(':')[0]], left):.0f} s, {left:.0f} s left)", flush=True)
        part_file(work, part).unlink(missing_ok=True)
        started = time.monotonic()
        failed = spawn(part, args, min(caps[part.partition(":")[0]], left))
        result = load(work, part)
        if failed:
            result["error_process"] = failed
        summary["parts"][part] = {**result, "wall_s": round(time.monotonic() - started, 1)}
        write_summary(out, summary)
    summary["bars"] = bars(setup, summary["parts"])
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    write_summary(out, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    setup = SETUPS[args.device]
    if args.model:
        setup = Setup(**{**asdict(setup), "models": tuple(args.model)})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.part:
        run_part(args.part, setup, args.device, Path(args.work), Path(args.out))
        return 0
    chosen_parts(args, setup)  # a misspelt --parts fails now, not after the first part
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device here. Fix: run on the GPU machine (docs/gpu.md), or --device cpu",
                  file=sys.stderr)
            return 2
    summary = orchestrate(args, setup)
    print(json.dumps({"bars": summary["bars"], "wall_s": summary["wall_s"]}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
