"""CLI commands of the profiling stage: ``calibrate``, ``profile-engines``, ``staircase``; progress bar with
ETA and the summary table go to stderr."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from itcp_deploy.cli.app import app
from itcp_deploy.cli.common import console, emit_json
from itcp_deploy.cli.pruning import IgnoreLayersOpt


@app.command("calibrate")
def calibrate_cmd(
    data: Annotated[str, typer.Option("--data", help="Dataset spec: digits, synthetic, cifar10:DIR, ...")],
    num: Annotated[int, typer.Option("--num", help="Samples to draw from the training split.")] = 512,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    name: Annotated[str | None, typer.Option("--name", help="Set name (calib/<name>.npz).")] = None,
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="Check samples are NxCxHxW.")] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where sets go.")] = Path("calib"),
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON on stdout.")] = False,
) -> None:
    """Draw a seeded INT8 calibration set (no augmentation) into calib/<name>.npz + .json."""
    from itcp_deploy.data.calibration import calibrate, read_manifest
    from itcp_deploy.shapes import parse_input_shape

    shape = parse_input_shape(input_shape) if input_shape is not None else None
    npz = calibrate(data, num=num, seed=seed, name=name, out_dir=out_dir, input_shape=shape)
    manifest = read_manifest(npz)
    if json_out:
        emit_json({**manifest, "path": str(npz)})
    else:
        console.print(f"wrote {npz} ({manifest['num']} samples of {manifest['shape'][1:]} from {data}, seed {seed})")


@app.command("profile-engines")
def profile_engines_cmd(
    model: Annotated[str, typer.Argument(help="Zoo name, torchvision:NAME, timm:NAME, model file or module:factory.")],
    input_shape: Annotated[str, typer.Option("--input-shape", help="NxCxHxW, e.g. 1x3x32x32.")],
    backend: Annotated[str, typer.Option("--backend", help="onnxruntime, tensorrt or torch.")] = "onnxruntime",
    precision: Annotated[str, typer.Option("--precision", help="fp32, fp16 or int8.")] = "fp32",
    weights: Annotated[str | None, typer.Option("--weights", help="Checkpoint to load.")] = None,
    budget_builds: Annotated[int, typer.Option("--budget-builds", help="Engines to build, holdouts included.")] = 32,
    holdout: Annotated[
        int, typer.Option("--holdout", min=0, help="Random plans kept to validate the perf model.")
    ] = 10,
    cache: Annotated[Path, typer.Option("--cache", help="Cache directory (cache.sqlite + artifacts).")] = Path(
        "engines"
    ),
    calib: Annotated[str | None, typer.Option("--calib", help="Calibration set name or .npz (int8).")] = None,
    shard: Annotated[str | None, typer.Option("--shard", help="i/n: build and measure one shard.")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Intra-op threads.")] = 1,
    provider: Annotated[str, typer.Option("--provider", help="onnxruntime provider: cpu, cuda, tensorrt.")] = "cpu",
    device: Annotated[str, typer.Option("--device", help="torch backend device: cpu or cuda.")] = "cpu",
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Interleaved rounds.")] = 10,
    runs: Annotated[int, typer.Option("--runs-per-round", min=1, help="Timed runs per engine per round.")] = 60,
    layer_runs: Annotated[int, typer.Option("--layer-runs", min=1, help="Profiled runs for per-layer times.")] = 300,
    trust_code: Annotated[bool, typer.Option("--trust-code", help="Allow pickles and factories.")] = False,
    ignore_layers: IgnoreLayersOpt = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Profile JSON path.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Build and measure engines at designed width plans (cached, resumable) into a profile for `fit`."""
    from dataclasses import asdict

    from itcp_deploy.atomic_io import write_json
    from itcp_deploy.engines import EngineOptions
    from itcp_deploy.profiling.design import DesignConfig
    from itcp_deploy.profiling.profiler import ProfileConfig, profile_model
    from itcp_deploy.profiling.timing import TimingConfig
    from itcp_deploy.shapes import parse_input_shape

    shape = parse_input_shape(input_shape)
    config = ProfileConfig(
        backend=backend,
        precision=precision,
        cache_dir=str(cache),
        calib=calib,
        shard=shard,
        design=DesignConfig(budget_builds=budget_builds, holdout=holdout),
        timing=TimingConfig(rounds=rounds, runs_per_round=runs),
        engine=EngineOptions(threads=threads, provider=provider, device=device),
        layer_runs=layer_runs,
    )
    with progress_bar() as progress:
        profile, summary = profile_model(
            model, shape, config, weights=weights, trust_code=trust_code, progress=progress,
            ignore_layers=tuple(ignore_layers or ()),
        )
    name = Path(model).stem if model.endswith((".pt", ".pth")) else model.replace(":", "_")
    out = out or cache / f"{name}-{profile.backend}-{precision}-{input_shape}.profile.json"
    profile.save(out)
    write_json(
        out.with_suffix(".config.json"),
        {"model": model, "input_shape": list(shape), "weights": weights, "config": asdict(config),
         "ignore_layers": list(ignore_layers or ())},
    )  # replays from Python
    print_summary(profile, summary, out, json_out)


@app.command("staircase")
def staircase_cmd(
    in_channels: Annotated[int, typer.Option("--in-channels", help="Conv input channels.")] = 32,
    hw: Annotated[int, typer.Option("--hw", help="Input height and width.")] = 32,
    max_width: Annotated[int, typer.Option("--max-width", help="Largest output width.")] = 64,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Intra-op threads.")] = 1,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Interleaved rounds.")] = 20,
    out: Annotated[Path, typer.Option("-o", "--out", help="PNG path.")] = Path("docs/staircase_ort_cpu.png"),
    json_out: Annotated[bool, typer.Option("--json", help="Print the points as JSON on stdout.")] = False,
) -> None:
    """Plot measured latency vs output width of one 3x3 conv on onnxruntime CPU, next to MACs."""
    from dataclasses import asdict

    from itcp_deploy.profiling.staircase import StaircaseConfig, staircase
    from itcp_deploy.profiling.timing import TimingConfig

    config = StaircaseConfig(
        in_channels=in_channels,
        hw=hw,
        max_width=max_width,
        threads=threads,
        timing=TimingConfig(warmup=50, rounds=rounds, runs_per_round=100),
    )
    points, path = staircase(config, out)
    if json_out:
        emit_json([asdict(p) for p in points])
    else:
        console.print(f"wrote {path} and {path.with_suffix('.json')} ({len(points)} widths)")


STAGES = {
    "build": "building engines",
    "measure": "measuring (interleaved)",
    "layers": "per-layer profiles",
    "isolated": "isolated layers",
}


@contextlib.contextmanager
def progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """Yield a ``progress(stage, done, total)`` callback drawing one bar per stage."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            if stage == "build":
                console.print(f"{total} engines to build or reuse from the cache")
            tasks[stage] = bar.add_task(STAGES.get(stage, stage), total=max(total, 1))
        bar.update(tasks[stage], completed=done, total=max(total, 1))

    with bar:
        yield update


def print_summary(profile, summary, out: Path, json_out: bool) -> None:
    """The end-of-run table (builds, measurements, noise floor, wall time), or JSON with ``--json``."""
    from rich.table import Table

    per_engine = summary.wall_s / max(1, summary.planned)
    rows = {
        "engines": summary.planned,
        "builds (new / cached)": f"{summary.builds_new} / {summary.builds_cached}",
        "measurements (new / cached)": f"{summary.measurements_new} / {summary.measurements_cached}",
        "noise floor (re-measurement, split-half)": "n/a"
        if math.isnan(summary.noise_pct)
        else f"{summary.noise_pct:.1f}%",
        "wall time": f"{summary.wall_s:.1f} s ({per_engine:.2f} s per engine)",
        "profile": str(out),
    }
    if json_out:
        emit_json(
            {
                "profile": str(out),
                "engines": summary.planned,
                "builds_new": summary.builds_new,
                "builds_cached": summary.builds_cached,
                "measurements_new": summary.measurements_new,
                "measurements_cached": summary.measurements_cached,
                "noise_pct": summary.noise_pct,
                "wall_s": summary.wall_s,
                "backend": profile.backend,
                "precision": profile.precision,
                "device": profile.device,
            }
        )
        return
    table = Table(
        title=f"profile-engines: {profile.model} on {profile.backend} {profile.backend_version} "
        f"{profile.precision}, {profile.device}"
    )
    table.add_column("")
    table.add_column("value")
    for key, value in rows.items():
        table.add_row(key, str(value))
    console.print(table)
