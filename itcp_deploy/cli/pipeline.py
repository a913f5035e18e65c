"""CLI commands of the pipeline: ``run``, ``check-latency`` (the CI gate) and ``demo``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from itcp_deploy.cli.app import app
from itcp_deploy.cli.common import (
    AdaptiveOpt,
    BackendOpt,
    BlockRemovalOpt,
    CompensateOpt,
    DeviceOpt,
    EpochsOpt,
    MarginOpt,
    MinAgreementOpt,
    PercentileOpt,
    PrecisionOpt,
    SlaOpt,
    SpeedupOpt,
    WorkspaceOpt,
    console,
    emit_json,
)
from itcp_deploy.cli.pruning import IgnoreLayersOpt

Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


@app.command("run")
def run_command(
    model: Annotated[str, typer.Argument(help="Model name or spec (see `itcp-deploy models`).")],
    data: Annotated[str, typer.Option("--data", help="Training/evaluation data spec (digits, synthetic, "
                                      "cifar10:DIR, ...; detection for a detector).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory (resumable).")],
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="NxCxHxW, e.g. 1x3x32x32.")] = None,
    target: Annotated[list[str] | None, typer.Option(
        "--target", help="A deployment target, repeatable: backend=openvino,shape=8x3x32x32,threads=2,"
        "percentile=99,sla_ms=10 (or speedup=...); see the README.")] = None,
    targets_file: Annotated[Path | None, typer.Option(
        "--targets", help="A TOML file of [[target]] tables (the --target keys).")] = None,
    sla_ms: SlaOpt = None,
    speedup: SpeedupOpt = None,
    weights: Annotated[str | None, typer.Option("--weights", help="Trained weights of MODEL.")] = None,
    backend: BackendOpt = "onnxruntime",
    precision: PrecisionOpt = "fp32",
    calib: Annotated[str | None, typer.Option("--calib", help="Calibration set (int8).")] = None,
    criterion: Annotated[str, typer.Option("--criterion", help="Group score: taylor, sensitivity, ...")] = "taylor",
    method: Annotated[str, typer.Option("--method", help="itcp, a baseline, tp-taylor or tp-taylor-round.")] = "itcp",
    epochs: EpochsOpt = 1,
    distill: Annotated[bool, typer.Option("--distill/--no-distill",
                                          help="Distil from the dense model while finetuning.")] = True,
    compensate: CompensateOpt = True,
    block_removal: BlockRemovalOpt = True,
    min_agreement: MinAgreementOpt = 0.0,
    percentile: PercentileOpt = 50,
    margin: MarginOpt = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Engine threads.")] = 1,
    device: DeviceOpt = "cpu",
    workspace_mb: WorkspaceOpt = 1024,
    cache: Annotated[str, typer.Option("--cache", help="Profiling cache directory.")] = "engines",
    max_builds: Annotated[int, typer.Option("--max-builds", min=3, help="Profiling budget: engines to build at "
                                            "most (fewer once the perf model meets its bar).")] = 32,
    adaptive: AdaptiveOpt = True,
    trust_code: Annotated[bool, typer.Option("--trust-code", help="Allow model specs that run code.")] = False,
    ignore_layers: IgnoreLayersOpt = None,
    json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Prune MODEL to the most accurate plan that meets the SLA (or every --target's SLA with one set of
    weights), and build its engine(s) into OUT/; exit 1 if a final engine misses its SLA, 2 on bad input."""
    from itcp_deploy.cli.output import deliver
    from itcp_deploy.cli.targets import run_targets
    from itcp_deploy.engines import EngineOptions
    from itcp_deploy.engines.build import EngineSpec
    from itcp_deploy.pipeline.config import FinetuneRecipe, ProfileSettings, RunConfig

    engine = EngineSpec(backend, precision, EngineOptions(threads=threads, device=device, workspace_mb=workspace_mb),
                        calib)
    targets = run_targets(target, targets_file, input_shape, (sla_ms, speedup, percentile, margin), engine,
                          data)
    config = RunConfig(
        model=model, data=data, out_dir=str(out), targets=targets, weights=weights, trust_code=trust_code,
        ignore_layers=tuple(ignore_layers or ()), criterion=criterion, method=method,
        recipe=FinetuneRecipe(epochs=epochs, distill=distill, train_subset=None),
        profile=ProfileSettings(cache_dir=cache, max_builds=max_builds, adaptive=adaptive), compensate=compensate,
        block_removal=block_removal, min_agreement=min_agreement, quiet=quiet or json)
    deliver(config, json)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")] = Path("demo-out"),
    train_seconds: Annotated[float, typer.Option("--train-seconds", min=1, help="Dense training time.")] = 60.0,
    json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Offline demo: train a CIFAR ResNet-20 on digits, prune it to 60% of its measured latency."""
    import time

    from itcp_deploy.cli.output import print_report, with_progress
    from itcp_deploy.pipeline.demo import DemoConfig, demo

    started = time.perf_counter()
    config = DemoConfig(out_dir=str(out), train_seconds=train_seconds, quiet=quiet or json)
    print_report(with_progress(demo, config, quiet or json), json)
    if not json:
        console.print(f"engine: {out / 'run'} (model.ort.onnx); report: {out / 'run' / 'report.md'}; "
                      f"demo wall time {time.perf_counter() - started:.0f} s")


@app.command("check-latency")
def check_latency_command(
    engine: Annotated[str | None, typer.Argument(help="Engine file or artifact directory to measure.")] = None,
    run_dir: Annotated[Path | None, typer.Option(
        "--run", help="Gate every target of this run folder (one or several), one line each.")] = None,
    backend: Annotated[str, typer.Option("--backend", help="onnxruntime, tensorrt or torch.")] = "onnxruntime",
    sla_ms: Annotated[str | None, typer.Option("--sla-ms", help="Absolute limit in ms.")] = None,
    reference: Annotated[str | None, typer.Option("--reference", help="Dense engine to compare with.")] = None,
    max_ratio: Annotated[str | None, typer.Option("--max-ratio", help="Limit on engine/reference.")] = None,
    percentile: Annotated[int, typer.Option("--percentile", help="50, 90 or 99.")] = 50,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Engine threads.")] = 1,
    input_shape: Annotated[
        str | None, typer.Option("--input-shape", help="NxCxHxW, for an engine with dynamic input dims.")
    ] = None,
    min_agreement: Annotated[str | None, typer.Option(
        "--min-agreement", help="Also fail below this top-1 agreement with --reference (0..1) on --data's "
        "test images.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="Data for --min-agreement.")] = None,
    json: Json = False,
) -> None:
    """Measure ENGINE (or every target's engine of a --run folder); exit 0 if each meets its limit, 1 if not,
    2 on bad input (the CI gate)."""
    from itcp_deploy.cli.shapes import parse_input_shape, positive_float
    from itcp_deploy.errors import UsageError
    from itcp_deploy.pipeline.gate import GateConfig, check_latency

    if (engine is None) == (run_dir is None):
        raise UsageError("give an ENGINE or --run OUT (not both)", "e.g. check-latency --run runs/two-targets")
    if run_dir is not None:
        _check_run(run_dir, json)
        return

    config = GateConfig(
        engine=str(engine), backend=backend, percentile=percentile, threads=threads, reference=reference,
        input_shape=parse_input_shape(input_shape) if input_shape is not None else None,
        sla_ms=positive_float(sla_ms, "--sla-ms") if sla_ms is not None else None,
        max_ratio=positive_float(max_ratio, "--max-ratio") if max_ratio is not None else None,
        min_agreement=positive_float(min_agreement, "--min-agreement") if min_agreement is not None else None,
        data=data)
    result = check_latency(config)
    if json:
        emit_json(result.to_dict())
    else:
        print(result.line())
    if not result.passed:
        sys.exit(1)


def _check_run(run_dir: Path, json: bool) -> None:
    """``check-latency --run``: one line (or one JSON entry) per target; exit 1 if any target misses."""
    from itcp_deploy.pipeline.gate import check_run

    results = check_run(run_dir)
    if json:
        emit_json({name: r.to_dict() for name, r in results})
    else:
        for name, r in results:
            print(f"{name}: {r.line()}")
    if not all(r.passed for _, r in results):
        sys.exit(1)
