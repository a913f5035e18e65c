"""CLI commands of the profiling stage: ``calibrate``, ``profile-engines`` (given an SLA, on to the ready
engine through the same pipeline as ``run``), ``staircase``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
from itcp_deploy.errors import UsageError

if TYPE_CHECKING:
    from itcp_deploy.engines.build import EngineSpec
    from itcp_deploy.pipeline.config import ProfileSettings

ENGINES = Path("engines")


@app.command("calibrate")
def calibrate_cmd(
    data: Annotated[str, typer.Option("--data", help="Dataset spec: digits, synthetic, cifar10:DIR, ...")],
    num: Annotated[int, typer.Option("--num", help="Samples to draw from the training split.")] = 512,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    name: Annotated[str | None, typer.Option("--name", help="Set name (calib/<name>.npz).")] = None,
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="Check samples are NxCxHxW.")] = None,
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Where sets go.")] = Path("calib"),
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON on stdout.")] = False,
) -> None:
    """Draw a seeded INT8 calibration set (no augmentation) into calib/<name>.npz + .json."""
    from itcp_deploy.cli.shapes import parse_input_shape
    from itcp_deploy.data.calibration import calibrate, read_manifest

    shape = parse_input_shape(input_shape) if input_shape is not None else None
    npz = calibrate(data, num=num, seed=seed, name=name, out_dir=out_dir, input_shape=shape)
    manifest = read_manifest(npz)
    if json_out:
        emit_json({**manifest, "path": str(npz)})
    else:
        console.print(f"wrote {npz} ({manifest['num']} samples of {manifest['shape'][1:]} from {data}, seed {seed})")


ShardOpt = Annotated[str | None, typer.Option("--shard", help="i/n: build and measure one shard of the fixed design "
                                                             "(merge with --no-adaptive).")]


@app.command("profile-engines")
def profile_engines_cmd(
    model: Annotated[str, typer.Argument(help="Zoo name, torchvision:NAME, timm:NAME, model file or module:factory.")],
    input_shape: Annotated[str, typer.Option("--input-shape", help="NxCxHxW, e.g. 1x3x32x32.")],
    backend: BackendOpt = "onnxruntime",
    precision: PrecisionOpt = "fp32",
    weights: Annotated[str | None, typer.Option("--weights", help="Checkpoint to load.")] = None,
    max_builds: Annotated[int, typer.Option("--max-builds", help="Engines to build at most, holdouts included.")] = 32,
    adaptive: AdaptiveOpt = True,
    holdout: Annotated[int, typer.Option("--holdout", min=0, help="Random plans kept to check the perf model.")] = 10,
    cache: Annotated[Path, typer.Option("--cache", help="Cache directory (cache.sqlite + artifacts).")] = ENGINES,
    calib: Annotated[str | None, typer.Option("--calib", help="Calibration set name or .npz (int8).")] = None,
    shard: ShardOpt = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Intra-op threads.")] = 1,
    provider: Annotated[str, typer.Option("--provider", help="onnxruntime provider: cpu, cuda, tensorrt.")] = "cpu",
    perf_hint: Annotated[str, typer.Option("--perf-hint", help="openvino hint: latency, throughput.")] = "latency",
    device: DeviceOpt = "cpu",
    workspace_mb: WorkspaceOpt = 1024,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Interleaved rounds.")] = 10,
    runs: Annotated[int, typer.Option("--runs-per-round", min=1, help="Timed runs per engine per round.")] = 60,
    layer_runs: Annotated[int, typer.Option("--layer-runs", min=1, help="Profiled runs for per-layer times.")] = 300,
    sla_ms: SlaOpt = None,
    speedup: SpeedupOpt = None,
    data: Annotated[str | None, typer.Option("--data", help="With an SLA: data for scores and finetuning.")] = None,
    epochs: EpochsOpt = 1,
    percentile: PercentileOpt = 50,
    margin: MarginOpt = None,
    trust_code: Annotated[bool, typer.Option("--trust-code", help="Allow pickles and factories.")] = False,
    ignore_layers: IgnoreLayersOpt = None,
    compensate: CompensateOpt = True,
    block_removal: BlockRemovalOpt = True,
    min_agreement: MinAgreementOpt = 0.0,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Profile JSON path; with an SLA, the output "
                                             "directory of the engine (as in `run`).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Build and measure engines at designed width plans (cached, resumable) into a profile for `fit`; with
    --sla-ms or --speedup, go on to the ready engine (ONNX Runtime model or TensorRT plan) under that SLA."""
    from itcp_deploy.cli.shapes import parse_input_shape, parse_target
    from itcp_deploy.engines import EngineOptions
    from itcp_deploy.engines.build import EngineSpec
    from itcp_deploy.pipeline.config import ProfileSettings
    from itcp_deploy.profiling.timing import TimingConfig
    shape = parse_input_shape(input_shape)
    engine = EngineSpec(backend, precision, EngineOptions(threads=threads, provider=provider, device=device,
                                                         perf_hint=perf_hint, workspace_mb=workspace_mb), calib)
    settings = ProfileSettings(cache_dir=str(cache), max_builds=max_builds, holdout=holdout, layer_runs=layer_runs,
                               adaptive=adaptive, timing=TimingConfig(rounds=rounds, runs_per_round=runs))
    if sla_ms is None and speedup is None:
        ref = ModelRef(model, weights, trust_code, tuple(ignore_layers or ()))
        _profile_only(ref, (input_shape, shape), engine, settings, shard, out, json_out)
        return
    from itcp_deploy.cli.output import deliver
    from itcp_deploy.pipeline.config import DeployTarget, FinetuneRecipe, RunConfig
    _check_sla_options(data, out, shard)
    target = DeployTarget.named(engine, shape, parse_target(sla_ms, speedup, percentile, margin))
    deliver(RunConfig(model=model, data=str(data), out_dir=str(out), targets=(target,), weights=weights,
                      trust_code=trust_code, ignore_layers=tuple(ignore_layers or ()), compensate=compensate,
                      block_removal=block_removal, min_agreement=min_agreement, profile=settings,
                      recipe=FinetuneRecipe(epochs=epochs, train_subset=None), quiet=json_out), json_out)


@dataclass(frozen=True)
class ModelRef:
    """The model a command loads: spec, weights, whether its spec may run code, layers kept at full width."""

    spec: str
    weights: str | None = None
    trust_code: bool = False
    ignore_layers: tuple[str, ...] = ()


def _check_sla_options(data: str | None, out: Path | None, shard: str | None) -> None:
    if data is None or out is None:
        raise UsageError("with --sla-ms or --speedup, profile-engines goes on to the engine and needs --data "
                         "(scores, finetuning) and -o (the output directory)", "add e.g. --data digits -o out/")
    if shard is not None:
        raise UsageError("--shard profiles one shard only and cannot go on to an engine",
                         "profile the shards first, then rerun without --shard with --sla-ms or --speedup")


def _profile_only(ref: ModelRef, shapes: tuple[str, tuple[int, int, int, int]], engine: EngineSpec,
                  settings: ProfileSettings, shard: str | None, out: Path | None, json_out: bool) -> None:
    """The profiling step alone: the profile JSON (and its replayable config) for `fit`. ``shapes``: the
    input shape as typed (names the default output) and parsed."""
    shape_text, shape = shapes
    _check_args(out, (ref.spec, ref.weights, engine.calib), engine.backend, engine.precision, shard)
    from dataclasses import asdict

    from itcp_deploy.atomic_io import write_json
    from itcp_deploy.cli.output import print_summary, progress_bar
    from itcp_deploy.perfmodel.fit import judge
    from itcp_deploy.profiling.design import DesignConfig
    from itcp_deploy.profiling.profiler import ProfileConfig, profile_model

    config = ProfileConfig(backend=engine.backend, precision=engine.precision, cache_dir=settings.cache_dir,
                           calib=engine.calib, shard=shard, timing=settings.timing, engine=engine.options,
                           design=DesignConfig(max_builds=settings.max_builds, holdout=settings.holdout,
                                               adaptive=settings.adaptive),
                           layer_runs=settings.layer_runs)
    with progress_bar() as progress:
        profile, summary = profile_model(ref.spec, shape, config, weights=ref.weights, trust_code=ref.trust_code,
                                         progress=progress, ignore_layers=ref.ignore_layers, judge=judge)
    name = Path(ref.spec).stem if ref.spec.endswith((".pt", ".pth")) else ref.spec.replace(":", "_")
    out = out or Path(settings.cache_dir) / f"{name}-{profile.backend}-{engine.precision}-{shape_text}.profile.json"
    profile.save(out)
    write_json(out.with_suffix(".config.json"),
               {"model": ref.spec, "input_shape": list(shape), "weights": ref.weights,
                "config": asdict(config), "ignore_layers": list(ref.ignore_layers)})  # replays from Python
    print_summary(profile, summary, out, json_out)


def _check_args(out: Path | None, inputs: tuple[str, str | None, str | None], backend: str, precision: str,
                shard: str | None) -> None:
    """Names, the shard and ``-o`` (with the ``.config.json`` beside it, never an input) before the model is built."""
    from itcp_deploy.names import check_engine
    from itcp_deploy.paths import check_outputs
    from itcp_deploy.profiling.design import parse_shard

    check_engine(backend, precision)
    parse_shard(shard)
    model, weights, calib = inputs
    check_outputs({"-o": out, "-o (its .config.json)": out and out.with_suffix(".config.json")},
                  {"weights": weights, "model file": model, "calibration set": calib})


@app.command("staircase")
def staircase_cmd(
    in_channels: Annotated[int, typer.Option("--in-channels", help="Conv input channels.")] = 32,
    hw: Annotated[int, typer.Option("--hw", help="Input height and width.")] = 32,
    max_width: Annotated[int, typer.Option("--max-width", help="Largest output width.")] = 64,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Intra-op threads.")] = 1,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Interleaved rounds.")] = 20,
    backend: Annotated[str, typer.Option("--backend", help="A CPU backend: onnxruntime or openvino.")] = "onnxruntime",
    out: Annotated[Path, typer.Option("-o", "--out", help="PNG path.")] = Path("docs/staircase_ort_cpu.png"),
    json_out: Annotated[bool, typer.Option("--json", help="Print the points as JSON on stdout.")] = False,
) -> None:
    """Plot measured latency vs output width of one 3x3 conv on a CPU backend, next to MACs."""
    from dataclasses import asdict

    from itcp_deploy.profiling.staircase import StaircaseConfig, staircase
    from itcp_deploy.profiling.timing import TimingConfig

    config = StaircaseConfig(
        in_channels=in_channels,
        hw=hw,
        max_width=max_width,
        threads=threads,
        backend=backend,
        timing=TimingConfig(warmup=50, rounds=rounds, runs_per_round=100),
    )
    points, path = staircase(config, out)
    if json_out:
        emit_json([asdict(p) for p in points])
    else:
        from itcp_deploy.engines.device import block_from_staircase

        block = block_from_staircase([p.width for p in points], [p.median_ms for p in points])
        console.print(f"wrote {path} and {path.with_suffix('.json')} ({len(points)} widths, steps of {block})")
