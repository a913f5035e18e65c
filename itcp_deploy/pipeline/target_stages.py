"""The stages of a run with several targets: each target gets its own dense engine, profile (its own cache
key: backend, precision, threads, batch), perf model and final engine under ``OUT/targets/<name>/``; the
group scores, the plan and the finetuned weights are shared (one set of weights serves every target).

The stages ``run`` has for one target are reused where nothing is per target (scores, finetuning).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from itcp_deploy.atomic_io import write_json
from itcp_deploy.pipeline.stages import (
    RunContext,
    fit_perf_model,
    profile_engines,
    restore_pruned,
    stage_finetune,
    stage_scores,
)
from itcp_deploy.pipeline.targets import DeployTarget, target_dir

if TYPE_CHECKING:
    from itcp_deploy.space import PruningSpace


def target_space(ctx: RunContext, target: DeployTarget) -> PruningSpace:
    """The run's pruning space traced at this target's input shape (same groups, the target's batch)."""
    from itcp_deploy.pruning import build_space

    c = ctx.config
    return build_space(ctx.inputs.model, target.input_shape, model_spec=c.model, ignore_layers=c.ignore_layers)


def stage_dense_targets(ctx: RunContext) -> dict:
    """Every target's dense engine; MACs, parameters and the dense accuracy once (at the first target's shape)."""
    from itcp_deploy.engines.build import build_engine
    from itcp_deploy.pruning import count_macs_params

    c, model = ctx.config, ctx.inputs.model
    dense = {t.name: str(build_engine(model, t.input_shape, target_dir(ctx.folder.root, t), "dense",
                                      t.engine).artifact) for t in c.targets}
    macs, params = count_macs_params(model, c.input_shape)
    write_json(ctx.folder.space, ctx.space.to_dict())
    return {"artifact": dense[c.targets[0].name], "targets": dense, "macs": macs, "params": params,
            "accuracy": ctx.inputs.accuracy(model)}


def stage_profile_targets(ctx: RunContext) -> dict:
    """Profile every target (engines cached across runs in ``--cache``; a finished target's profile is kept
    when the stage resumes)."""
    from itcp_deploy.profiling.records import Profile

    c, out = ctx.config, {}
    for t in c.targets:
        path = target_dir(ctx.folder.root, t) / "profile.json"
        if path.exists():
            out[t.name] = {"builds": Profile.load(path).builds, "resumed": True}
            continue
        ctx.log(f"profile {t.describe()}: {c.profile.max_builds} engines ...")
        profile, summary = profile_engines(ctx.inputs.model, target_space(ctx, t), t.engine, c.profile,
                                           seed=c.seed, progress=ctx.progress)
        profile.save(path)
        out[t.name] = {"builds": profile.builds, "builds_new": summary.builds_new, "noise_pct": summary.noise_pct}
    return out


def stage_fit_targets(ctx: RunContext) -> dict:
    """One perf model per target, fitted on its own profile, on the run's candidates (width 0 where blocks may be
    removed, as the scores are)."""
    from itcp_deploy.perfmodel.model import on_space
    from itcp_deploy.profiling.records import Profile

    out = {}
    for t in ctx.config.targets:
        folder = target_dir(ctx.folder.root, t)
        model = fit_perf_model(Profile.load(folder / "profile.json"), ctx.config.profile, folder / "perf_model.json")
        model = on_space(model, model.space.with_removal(ctx.config.block_removal))
        model.save(folder / "perf_model.json")
        out[t.name] = {"report": asdict(model.report) if model.report else None}
    return out


def stage_vector_loop(ctx: RunContext) -> dict:
    from itcp_deploy.pipeline.vector_loop import vector_loop

    dense = {name: Path(p) for name, p in ctx.state.done("dense")["targets"].items()}
    return vector_loop(ctx, dense, ctx.folder.read_arrays(ctx.folder.scores))


def stage_final_targets(ctx: RunContext) -> dict:
    """Build the finetuned model's engine for every target and measure each interleaved with its dense engine."""
    from itcp_deploy.engines.build import build_engine
    from itcp_deploy.pipeline.vector_loop import target_meter
    from itcp_deploy.pruning import count_macs_params

    c = ctx.config
    pruned = restore_pruned(ctx.inputs.model, ctx.space, ctx.folder)
    dense_ms = ctx.state.done("loop")["dense_measured_ms"]
    out = {}
    for t in c.targets:
        built = build_engine(pruned, t.input_shape, target_dir(ctx.folder.root, t), "model", t.engine)
        meter = target_meter(t, Path(ctx.state.done("dense")["targets"][t.name]), ctx, dense_ms[t.name])
        final = meter.measure(built.artifact, c.loop.final_timing)
        verdict = meter.judge(final)
        out[t.name] = {"artifact": str(built.artifact), "main_file": str(built.main_file or ""),
                       "final": asdict(final.latency.stats), "dense": asdict(final.dense), "ratio": final.ratio,
                       "measured_ms": verdict.measured_ms, "sla_ms": verdict.limit_ms, "met": verdict.met}
    macs, params = count_macs_params(pruned, c.input_shape)
    return {"targets": out, "macs": macs, "params": params}


TARGET_STAGES: list[tuple[str, Callable[[RunContext], dict]]] = [
    ("dense", stage_dense_targets),
    ("profile", stage_profile_targets),
    ("fit", stage_fit_targets),
    ("scores", stage_scores),
    ("loop", stage_vector_loop),
    ("finetune", stage_finetune),
    ("final", stage_final_targets),
]
