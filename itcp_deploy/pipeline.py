"""The whole ITCP pipeline (``itcp-deploy run``): the one module that knows every stage.

dense model -> profile engines (cache reused) -> fit perf model -> group scores -> closed loop
(search -> prune -> build -> measure against the dense engine, interleaved; shrink or relax the budget by
measured/predicted and re-solve) -> BatchNorm re-estimation + finetuning -> final engine -> final measurement
-> report.

Latency depends on the architecture, not on the weights, so the closed loop runs on freshly pruned structures
and finetuning happens once, on the structure that met the SLA. Every stage writes its result into the output
directory and records itself in ``state.json``; a rerun resumes after the last finished stage.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from itcp_deploy.atomic_io import read_json, write_json
from itcp_deploy.engine_build import EngineSpec
from itcp_deploy.errors import InputFileError, UsageError
from itcp_deploy.profiling.timing import TimingConfig

STATE_FILE = "state.json"
Log = Callable[[str], None]


@dataclass(frozen=True)
class RunConfig:
    """Everything ``itcp-deploy run`` takes. Give exactly one of ``sla_ms`` and ``speedup`` (SLA = the dense
    engine's measured latency / speedup).

    ``margin``: the closed loop aims at ``(1 - margin) * SLA`` so that a re-measurement (a CI gate) of a plan
    that just met the SLA does not fail on noise; it accepts a plan whose measured latency is within
    ``[accept_low * target, target]`` and otherwise re-solves with the budget scaled by target/measured, at
    most ``max_rounds`` times (then keeps the best plan that met the target, or says why it gives up).
    """

    model: str
    data: str
    input_shape: tuple[int, int, int, int]
    out_dir: str
    sla_ms: float | None = None
    speedup: float | None = None
    weights: str | None = None
    num_classes: int | None = None
    trust_code: bool = False
    ignore_layers: tuple[str, ...] = ()  # globs of layers whose output width is kept (build_space)
    engine: EngineSpec = field(default_factory=EngineSpec)
    percentile: int = 50
    criterion: str = "taylor"
    importance: str = "taylor"
    method: str = "itcp"
    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 64
    distill: bool = False
    time_budget_s: float | None = None
    cache_dir: str = "engines"
    budget_builds: int = 32
    holdout: int = 10
    profile_timing: TimingConfig = field(default_factory=TimingConfig)
    loop_timing: TimingConfig = field(default_factory=lambda: TimingConfig(warmup=50, rounds=20, runs_per_round=50))
    final_timing: TimingConfig = field(default_factory=lambda: TimingConfig(warmup=100, rounds=30, runs_per_round=100))
    margin: float = 0.03
    accept_low: float = 0.9
    max_rounds: int = 4
    bins: int = 1000
    score_samples: int = 512
    seed: int = 0
    force_fit: bool = False
    quiet: bool = False

    def validate(self) -> None:
        if (self.sla_ms is None) == (self.speedup is None):
            raise UsageError("give exactly one of --sla-ms and --speedup", "e.g. --sla-ms 0.5 or --speedup 2")
        for name in ("sla_ms", "speedup"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v <= 0):
                raise UsageError(f"--{name.replace('_', '-')} must be a finite number > 0, got {v}",
                                 f"pass e.g. --{name.replace('_', '-')} 2")
        if self.epochs < 0:
            raise UsageError(f"--epochs must be >= 0, got {self.epochs}", "pass e.g. --epochs 1")
        if self.percentile not in (50, 90, 99):
            raise UsageError(f"--percentile must be 50, 90 or 99, got {self.percentile}", "pass 50, 90 or 99")
        if not 0 <= self.margin < 0.5:
            raise UsageError(f"--margin must be in [0, 0.5), got {self.margin}", "pass e.g. --margin 0.03")


class _State:
    """``state.json``: finished stages and their small results; written atomically after each stage."""

    def __init__(self, out_dir: Path, config: RunConfig) -> None:
        self.path = out_dir / STATE_FILE
        self.fingerprint = {k: v for k, v in _config_dict(config).items()
                            if k not in ("quiet", "out_dir", "time_budget_s")}
        self.data: dict[str, Any] = {"config": self.fingerprint, "stages": {}}
        if self.path.exists():
            saved = read_json(self.path, "run state")
            if saved.get("config") != self.fingerprint:
                raise UsageError(f"{out_dir} holds a run with other settings",
                                 "use another -o directory, or delete it to start over")
            self.data = saved

    def done(self, stage: str) -> dict | None:
        return self.data["stages"].get(stage)

    def finish(self, stage: str, result: dict) -> dict:
        self.data["stages"][stage] = result
        write_json(self.path, self.data)
        return result


def _config_dict(config: RunConfig) -> dict:
    return json.loads(json.dumps(asdict(config), default=str))


@dataclass
class _Context:
    """What the stages share in memory (models are rebuilt from files on resume)."""

    config: RunConfig
    out: Path
    state: _State
    log: Log
    model: Any = None
    space: Any = None
    train_info: Any = None
    plain_info: Any = None  # the train split without augmentation: scores, BN statistics
    test_info: Any = None
    criteria: Any = None  # pruning.output_kind.Criteria: the score and importance actually used
    progress: Callable[[str, int, int], None] | None = None
    wall_s: dict[str, float] = field(default_factory=dict)


def run(config: RunConfig, log: Log | None = None, progress: Callable[[str, int, int], None] | None = None):
    """Run the pipeline; returns the :class:`~itcp_deploy.report.RunReport` (also in ``OUT/report.json``).

    Raises:
        UsageError, InputFileError: bad options or files.
        InfeasibleError: the SLA is below the fastest reachable plan (names the minimum latency).
    """
    config.validate()
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise InputFileError(f"output {out} is a file", "give a directory with -o")
    out.mkdir(parents=True, exist_ok=True)
    ctx = _Context(config, out, _State(out, config), log or (lambda msg: None), progress=progress)
    _load_inputs(ctx)
    for name, stage in _STAGES:
        if ctx.state.done(name) is None:
            ctx.log(f"stage {name} ...")
            t0 = time.perf_counter()
            result = stage(ctx)
            ctx.wall_s[name] = time.perf_counter() - t0
            ctx.state.finish(name, {**result, "wall_s": ctx.wall_s[name]})
        else:
            ctx.log(f"stage {name}: done in an earlier run, skipped")
    return _report(ctx)


def _load_inputs(ctx: _Context) -> None:
    import torch

    from itcp_deploy.data import load_dataset
    from itcp_deploy.models import create_model
    from itcp_deploy.pruning import build_space
    from itcp_deploy.pruning.output_kind import criteria_for

    c = ctx.config
    torch.manual_seed(c.seed)
    ctx.train_info = load_dataset(c.data, "train")
    ctx.plain_info = load_dataset(c.data, "train", augment=False)
    ctx.test_info = load_dataset(c.data, "test")
    num_classes = c.num_classes or ctx.train_info.num_classes
    ctx.model = create_model(c.model, num_classes=num_classes, weights=c.weights, trust_code=c.trust_code).eval()
    ctx.space = build_space(ctx.model, c.input_shape, model_spec=c.model, ignore_layers=c.ignore_layers)
    ctx.criteria = criteria_for(ctx.model, c.input_shape, c.criterion, c.importance)
    if ctx.criteria.note and c.epochs > 0:
        raise UsageError(f"{c.model} has no classification output, so it cannot be finetuned here",
                         "pass --epochs 0 (BatchNorm re-estimation only) and finetune it with your own loss")


def _loader(ctx: _Context, train: bool, max_samples: int | None = None):
    from itcp_deploy.data import make_loader

    info = ctx.plain_info if train else ctx.test_info
    return make_loader(info, ctx.config.batch_size, shuffle=train, seed=ctx.config.seed, max_samples=max_samples)


# ---------------------------------------------------------------- stages


def _stage_dense(ctx: _Context) -> dict:
    from itcp_deploy.engine_build import build_engine
    from itcp_deploy.pruning import count_macs_params
    from itcp_deploy.train import evaluate

    c = ctx.config
    built = build_engine(ctx.model, c.input_shape, ctx.out, "dense", c.engine)
    macs, params = count_macs_params(ctx.model, c.input_shape)
    accuracy = evaluate(ctx.model, _loader(ctx, train=False))["accuracy"]
    write_json(ctx.out / "space.json", ctx.space.to_dict())
    return {"artifact": str(built.artifact), "macs": macs, "params": params, "accuracy": accuracy}


def _stage_profile(ctx: _Context) -> dict:
    from itcp_deploy.profiling.design import DesignConfig
    from itcp_deploy.profiling.profiler import ProfileConfig, run_profiling

    c = ctx.config
    pc = ProfileConfig(backend=c.engine.backend, precision=c.engine.precision, cache_dir=c.cache_dir,
                       design=DesignConfig(budget_builds=c.budget_builds, holdout=c.holdout, seed=c.seed),
                       timing=c.profile_timing, engine=c.engine.options, calib=c.engine.calib)
    profile, summary = run_profiling(ctx.model, ctx.space, pc, ctx.progress)
    profile.save(ctx.out / "profile.json")
    return {"builds": profile.builds, "builds_new": summary.builds_new, "noise_pct": summary.noise_pct,
            "measurements_new": summary.measurements_new}


def _stage_fit(ctx: _Context) -> dict:
    from itcp_deploy.perfmodel import fit
    from itcp_deploy.profiling.records import Profile

    model = fit(Profile.load(ctx.out / "profile.json"), force=ctx.config.force_fit)
    model.save(ctx.out / "perf_model.json")
    return {"report": asdict(model.report)}


def _stage_scores(ctx: _Context) -> dict:
    from itcp_deploy.pruning import group_scores

    c = ctx.config
    loader = _loader(ctx, train=True, max_samples=c.score_samples)
    calib = _loader(ctx, train=False, max_samples=c.score_samples)
    if ctx.criteria.note:
        ctx.log(f"note: {ctx.criteria.note}")
    scores = group_scores(ctx.model, ctx.space, ctx.criteria.score, loader=loader, calib_loader=calib,
                          cache_path=ctx.out / "sensitivity_cache.json")
    write_json(ctx.out / "scores.json", {k: [float(x) for x in v] for k, v in scores.items()})
    return {"criterion": ctx.criteria.score, "note": ctx.criteria.note}


def _stage_loop(ctx: _Context) -> dict:
    from itcp_deploy.closed_loop import LoopInputs, closed_loop

    c = ctx.config
    dense = ctx.state.done("dense")
    return closed_loop(LoopInputs(ctx.model, ctx.space, ctx.out, c, Path(dense["artifact"]),
                                  _read_scores(ctx.out)), ctx.log)


def _read_scores(out: Path) -> dict:
    import numpy as np

    return {k: np.asarray(v, dtype=float) for k, v in read_json(out / "scores.json", "scores").items()}


def _stage_finetune(ctx: _Context) -> dict:
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.pruning import apply_widths, save_pruned
    from itcp_deploy.train import TrainConfig, evaluate, recalibrate_bn, train

    c = ctx.config
    plan = PruningPlan.load(ctx.out / "widths.json")
    importance = ctx.criteria.importance
    loader = _loader(ctx, train=True, max_samples=c.score_samples) if importance == "taylor" else None
    pruned = apply_widths(ctx.model, ctx.space, plan.widths, importance=importance, loader=loader)
    recalibrate_bn(pruned, _loader(ctx, train=True), num_batches=20)
    acc_bn = evaluate(pruned, _loader(ctx, train=False))["accuracy"]
    metrics: dict = {}
    if c.epochs > 0:
        tc = TrainConfig(epochs=c.epochs, lr=c.lr, batch_size=c.batch_size, seed=c.seed,
                         teacher=ctx.model if c.distill else None, checkpoint_dir=ctx.out / "finetune",
                         resume=True, time_budget_s=c.time_budget_s, quiet=c.quiet, device="cpu")
        metrics = train(pruned, ctx.train_info, None, tc)
    pruned = pruned.cpu().eval()
    acc = evaluate(pruned, _loader(ctx, train=False))["accuracy"] if c.epochs > 0 else acc_bn
    save_pruned(ctx.out / "pruned.pt", pruned, plan, plan_path=ctx.out / "widths.json")
    return {"accuracy_pruned_bn": acc_bn, "accuracy_final": acc,
            "epochs_completed": metrics.get("epochs_completed", 0)}


def _stage_final(ctx: _Context) -> dict:
    from itcp_deploy.closed_loop import measure_pair
    from itcp_deploy.engine_build import build_engine
    from itcp_deploy.pruning import count_macs_params, load_pruned

    c = ctx.config
    pruned = load_pruned(ctx.out / "pruned.pt", ctx.out / "widths.json", trust_code=c.trust_code).eval()
    built = build_engine(pruned, c.input_shape, ctx.out, "model", c.engine)
    macs, params = count_macs_params(pruned, c.input_shape)
    dense = ctx.state.done("dense")
    stats, ratio = measure_pair(c, built.artifact, Path(dense["artifact"]), c.final_timing)
    return {"artifact": str(built.artifact), "main_file": str(built.main_file) if built.main_file else None,
            "macs": macs, "params": params, "final": asdict(stats[0]), "dense": asdict(stats[1]),
            "ratio": ratio}


_STAGES: list[tuple[str, Callable[[_Context], dict]]] = [
    ("dense", _stage_dense),
    ("profile", _stage_profile),
    ("fit", _stage_fit),
    ("scores", _stage_scores),
    ("loop", _stage_loop),
    ("finetune", _stage_finetune),
    ("final", _stage_final),
]


def _report(ctx: _Context):
    from itcp_deploy.perfmodel.model import PerfModel
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.profiling.records import Profile
    from itcp_deploy.report import RunReport, plot_front, plot_pred_vs_measured, plot_widths

    c, s = ctx.config, ctx.state
    dense, loop, fin, final = s.done("dense"), s.done("loop"), s.done("finetune"), s.done("final")
    plan = PruningPlan.load(ctx.out / "widths.json")
    q = c.percentile
    final_ms = {k: final["final"][k] for k in ("median_ms", "p90_ms", "p99_ms")}
    sla = loop["sla_ms"]
    # --speedup sets the SLA from the dense engine, so judge it by the interleaved ratio (drift cancels);
    # --sla-ms is absolute.
    measured = (final["ratio"] * loop["dense_measured_ms"] if c.speedup is not None
                else final["final"]["median_ms" if q == 50 else f"p{q}_ms"])
    perf = PerfModel.load(ctx.out / "perf_model.json")
    report = RunReport(
        model=c.model, backend=c.engine.backend, precision=c.engine.precision, device=perf.meta.get("device", ""),
        sla_ms=sla, percentile=q, dense_latency_ms=final["dense"]["median_ms"],
        predicted_latency_ms=float(plan.predicted_ms or 0.0), final_latency_ms=final_ms,
        final_over_dense=final["ratio"], met_sla=bool(measured <= sla), measured_over_sla=measured / sla,
        accuracy_dense=dense["accuracy"], accuracy_pruned_bn=fin["accuracy_pruned_bn"],
        accuracy_final=fin["accuracy_final"], macs_dense=dense["macs"], macs_final=final["macs"],
        params_dense=dense["params"], params_final=final["params"], rounds=loop["rounds"],
        widths=dict(plan.widths), full_widths={g: ctx.space.group(g).full_width for g in plan.widths},
        criterion=c.criterion, method=c.method, epochs=c.epochs,
        perf_model_error={k: v for k, v in asdict(perf.report).items() if isinstance(v, float)},
        notes=[n for n in [s.done("scores").get("note")] if n] + list(loop.get("notes", [])),
        wall_s={k: v.get("wall_s", 0.0) for k, v in s.data["stages"].items()},
    )
    report.save(ctx.out)
    profile = Profile.load(ctx.out / "profile.json")
    holdout = profile.by_role("holdout") or profile.by_role("design")
    plot_pred_vs_measured([perf.predict_ms(e.widths) for e in holdout], [e.latency.median_ms for e in holdout],
                          ctx.out / "latency_pred_vs_measured.png",
                          f"{c.model}: perf model on held-out engines")
    plot_front(plan.pareto, (float(plan.predicted_ms or 0.0), float(plan.score or 0.0)),
               float(plan.budget_ms or sla), ctx.out / "pareto.png")
    plot_widths(report.widths, report.full_widths, ctx.out / "widths.png")
    return report


def summary_rows(report) -> list[tuple[str, str, str]]:
    """(metric, dense, pruned) rows for the CLI's summary table."""
    acc = (lambda a: "n/a" if a is None else f"{a:.2f}%")  # noqa: E731
    f = report.final_latency_ms
    return [
        ("latency median (ms)", f"{report.dense_latency_ms:.4f}", f"{f['median_ms']:.4f}"),
        ("latency p90 / p99 (ms)", "", f"{f['p90_ms']:.4f} / {f['p99_ms']:.4f}"),
        ("SLA (ms)", "", f"{report.sla_ms:.4f} ({'met' if report.met_sla else 'MISSED'})"),
        ("pruned / dense latency", "", f"{report.final_over_dense:.3f}"),
        ("accuracy", acc(report.accuracy_dense), acc(report.accuracy_final)),
        ("MACs", f"{report.macs_dense:,}", f"{report.macs_final:,}"),
        ("params", f"{report.params_dense:,}", f"{report.params_final:,}"),
        ("closed-loop rounds", "", str(len(report.rounds))),
    ]


__all__ = ["RunConfig", "run", "summary_rows"]
