"""CLI commands of the pipeline: ``run``, ``check-latency`` (the CI gate) and ``demo``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from itcp_deploy.cli.app import app
from itcp_deploy.cli.common import console, emit_json
from itcp_deploy.cli.pruning import IgnoreLayersOpt

Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


def _print_report(report, json_out: bool) -> None:
    from dataclasses import asdict

    from rich.table import Table

    from itcp_deploy.pipeline import summary_rows

    if json_out:
        emit_json(asdict(report))
        return
    table = Table(title=f"{report.model} on {report.backend} ({report.precision})")
    for col in ("", "dense", "pruned"):
        table.add_column(col)
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")


def _with_progress(job, config, quiet: bool):
    """``job(config)`` silently, or with a log line per stage and rich progress bars."""
    from itcp_deploy.cli.profiling import progress_bar

    if quiet:
        return job(config)
    with progress_bar() as progress:
        return job(config, log=lambda msg: console.print(f"[dim]{msg}[/dim]"), progress=progress)


@app.command("run")
def run_command(
    model: Annotated[str, typer.Argument(help="Model name or spec (see `itcp-deploy models`).")],
    data: Annotated[str, typer.Option("--data", help="Training/evaluation data spec (digits, cifar10:DIR, ...).")],
    input_shape: Annotated[str, typer.Option("--input-shape", help="NxCxHxW, e.g. 1x3x32x32.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (resumable).")],
    sla_ms: Annotated[str | None, typer.Option("--sla-ms", help="Latency SLA in ms.")] = None,
    speedup: Annotated[str | None, typer.Option("--speedup", help="SLA = dense latency / S.")] = None,
    weights: Annotated[str | None, typer.Option("--weights", help="Trained weights of MODEL.")] = None,
    backend: Annotated[str, typer.Option("--backend", help="onnxruntime, tensorrt or torch.")] = "onnxruntime",
    precision: Annotated[str, typer.Option("--precision", help="fp32, fp16 or int8.")] = "fp32",
    calib: Annotated[str | None, typer.Option("--calib", help="Calibration set (int8).")] = None,
    criterion: Annotated[str, typer.Option("--criterion", help="Group score: taylor, sensitivity, ...")] = "taylor",
    method: Annotated[str, typer.Option("--method", help="itcp or a baseline.")] = "itcp",
    epochs: Annotated[int, typer.Option("--epochs", help="Finetuning epochs (0: BN re-estimation only).")] = 1,
    distill: Annotated[bool, typer.Option("--distill", help="Distil from the dense model.")] = False,
    percentile: Annotated[int, typer.Option("--percentile", help="50, 90 or 99.")] = 50,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Engine threads.")] = 1,
    cache: Annotated[str, typer.Option("--cache", help="Profiling cache directory.")] = "engines",
    trust_code: Annotated[bool, typer.Option("--trust-code", help="Allow model specs that run code.")] = False,
    ignore_layers: IgnoreLayersOpt = None,
    json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Prune MODEL to the most accurate plan that meets the SLA, and build its engine into OUT/."""
    from itcp_deploy.engine_build import EngineSpec
    from itcp_deploy.engines import EngineOptions
    from itcp_deploy.pipeline import RunConfig, run
    from itcp_deploy.shapes import parse_input_shape, positive_float

    config = RunConfig(
        model=model, data=data, input_shape=parse_input_shape(input_shape), out_dir=str(out),
        sla_ms=positive_float(sla_ms, "--sla-ms") if sla_ms is not None else None,
        speedup=positive_float(speedup, "--speedup") if speedup is not None else None,
        weights=weights, trust_code=trust_code, ignore_layers=tuple(ignore_layers or ()),
        engine=EngineSpec(backend, precision, EngineOptions(threads=threads), calib),
        percentile=percentile, criterion=criterion, method=method, epochs=epochs, distill=distill,
        cache_dir=cache, quiet=quiet or json)
    config.validate()
    _print_report(_with_progress(run, config, quiet or json), json)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("demo-out"),
    train_seconds: Annotated[float, typer.Option("--train-seconds", min=1, help="Dense training time.")] = 60.0,
    json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Offline demo: train a CIFAR ResNet-20 on digits, prune it to 60% of its measured latency."""
    import time

    from itcp_deploy.demo import DemoConfig, demo

    started = time.perf_counter()
    config = DemoConfig(out_dir=str(out), train_seconds=train_seconds, quiet=quiet or json)
    _print_report(_with_progress(demo, config, quiet or json), json)
    if not json:
        console.print(f"engine: {out / 'run'} (model.ort.onnx); report: {out / 'run' / 'report.md'}; "
                      f"demo wall time {time.perf_counter() - started:.0f} s")


@app.command("check-latency")
def check_latency_command(
    engine: Annotated[str, typer.Argument(help="Engine file or artifact directory to measure.")],
    backend: Annotated[str, typer.Option("--backend", help="onnxruntime, tensorrt or torch.")] = "onnxruntime",
    sla_ms: Annotated[str | None, typer.Option("--sla-ms", help="Absolute limit in ms.")] = None,
    reference: Annotated[str | None, typer.Option("--reference", help="Dense engine to compare with.")] = None,
    max_ratio: Annotated[str | None, typer.Option("--max-ratio", help="Limit on engine/reference.")] = None,
    percentile: Annotated[int, typer.Option("--percentile", help="50, 90 or 99.")] = 50,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Engine threads.")] = 1,
    json: Json = False,
) -> None:
    """Measure ENGINE; exit 0 if it meets the limit, 1 if not, 2 on bad input (the CI gate)."""
    from itcp_deploy.gate import GateConfig, check_latency
    from itcp_deploy.shapes import positive_float

    config = GateConfig(
        engine=engine, backend=backend, percentile=percentile, threads=threads, reference=reference,
        sla_ms=positive_float(sla_ms, "--sla-ms") if sla_ms is not None else None,
        max_ratio=positive_float(max_ratio, "--max-ratio") if max_ratio is not None else None)
    result = check_latency(config)
    if json:
        emit_json(result.to_dict())
    else:
        print(result.line())
    if not result.passed:
        sys.exit(1)
