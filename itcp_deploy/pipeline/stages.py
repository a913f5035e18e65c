"""The stages of ``run`` as plain functions over a :class:`RunContext`, in order (:data:`STAGES`): the dense
engines, the profiles and perf models (one per target), the group scores, the method's search with measured
engines (its :class:`Strategy`), finetuning, the final engines. Each returns the small record ``state.json``
keeps; its files go where the :class:`~itcp_deploy.pipeline.run_dir.RunFolder` says (per target too).

Above them: the pieces the comparison benchmark (``bench/comparison``) reuses, so that it runs the pipeline's
own code: profile + fit the perf model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from itcp_deploy.atomic_io import write_json
from itcp_deploy.engines.build import EngineSpec
from itcp_deploy.pipeline.config import ProfileSettings, RunConfig
from itcp_deploy.pipeline.run_dir import RunFolder, RunState, TargetFiles
from itcp_deploy.pipeline.sources import ModelInputs, check_finetuned

if TYPE_CHECKING:
    from torch import nn

    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.pipeline.config import DeployTarget
    from itcp_deploy.pipeline.meter import TargetMeter
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.profiling.profiler import ProfileConfig, ProfileSummary
    from itcp_deploy.profiling.records import Profile
    from itcp_deploy.space import PruningSpace

Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


def profile_config(engine: EngineSpec, settings: ProfileSettings, seed: int = 0,
                   focus: float | None = None) -> ProfileConfig:
    """The profiler's config for ``engine`` under ``settings``; ``focus``: the latency fraction of the dense
    engine the search will aim at (:class:`~itcp_deploy.profiling.design.DesignConfig`)."""
    from itcp_deploy.profiling.design import DesignConfig
    from itcp_deploy.profiling.profiler import ProfileConfig

    return ProfileConfig(backend=engine.backend, precision=engine.precision, cache_dir=settings.cache_dir,
                         design=DesignConfig(max_builds=settings.max_builds, holdout=settings.holdout, seed=seed,
                                             adaptive=settings.adaptive, focus=focus),
                         timing=settings.timing, engine=engine.options, layer_runs=settings.layer_runs,
                         calib=engine.calib)


def profile_engines(model: nn.Module, space: PruningSpace, engine: EngineSpec, settings: ProfileSettings, *,
                    seed: int = 0, progress: Progress | None = None,
                    focus: float | None = None) -> tuple[Profile, ProfileSummary]:
    """Build and measure the designed engines of ``space`` (cached in ``settings.cache_dir``), in rounds until
    the perf model meets its bar or ``settings.max_builds`` are spent (``settings.adaptive``)."""
    from itcp_deploy.perfmodel.fit import judge
    from itcp_deploy.profiling.profiler import run_profiling

    return run_profiling(model, space, profile_config(engine, settings, seed, focus), progress, judge)


def obtain_profile(model: nn.Module, space: PruningSpace, engine: EngineSpec, settings: ProfileSettings,
                   path: Path, log: Log, *, seed: int = 0, progress: Progress | None = None) -> Profile:
    """The profile at ``settings.profile_path`` (or ``path``) when it exists and was taken on this device with
    these settings (else :class:`InputFileError`), or a new one saved there."""
    from itcp_deploy.profiling.identity import profile_identity
    from itcp_deploy.profiling.records import Profile

    given = Path(settings.profile_path) if settings.profile_path else path
    if given.exists():
        log(f"profile: reusing {given}")
        profile = Profile.load(given)
        profile.check_identity(profile_identity(profile_config(engine, settings, seed)), given)
        return profile
    log(f"profile: building {settings.max_builds} engines (cache {settings.cache_dir}) ...")
    profile, summary = profile_engines(model, space, engine, settings, seed=seed, progress=progress)
    profile.save(given)
    log(f"profile: {summary.builds_new} new builds, noise {summary.noise_pct:.1f}%")
    return profile


def reuse_perf_model(path: Path, engine: EngineSpec, settings: ProfileSettings) -> PerfModel:
    """A perf model fitted earlier, refused (:class:`InputFileError`) if its profile was taken on another
    device or with other settings."""
    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.profiling.identity import profile_identity
    from itcp_deploy.profiling.records import check_identity

    model = PerfModel.load(path)
    check_identity(model.meta, profile_identity(profile_config(engine, settings)), f"perf model {path}")
    return model


def fit_perf_model(profile: Profile, settings: ProfileSettings, path: Path) -> PerfModel:
    """Fit the perf model on ``profile`` and save it to ``path`` (refuses a bad fit unless ``force_fit``)."""
    from itcp_deploy.perfmodel import fit

    model = fit(profile, force=settings.force_fit)
    model.save(path)
    return model


# ---------------------------------------------------------------- the stages of `run`


@dataclass(frozen=True)
class Strategy:
    """How a method finds its plan (``pipeline/strategies.py`` registers one per method): ``loop(ctx,
    meters)`` searches with measured engines, writes the plan and returns the loop's record; ``pruned(ctx,
    plan)`` makes the plan into the model to finetune (BatchNorm re-estimated) and names the refit layers."""

    loop: Callable[[RunContext, list[TargetMeter]], dict]
    pruned: Callable[[RunContext, PruningPlan], tuple[nn.Module, list[str]]]


@dataclass
class RunContext:
    """What the stages of one run share in memory (models are rebuilt from files on resume)."""

    config: RunConfig
    folder: RunFolder
    state: RunState
    inputs: ModelInputs
    space: PruningSpace
    strategy: Strategy
    log: Log
    progress: Progress | None = None

    def target_space(self, target: DeployTarget) -> PruningSpace:
        """The run's space traced at ``target``'s input shape (same groups, the target's batch)."""
        from itcp_deploy.pruning import build_space

        if target.input_shape == self.config.input_shape:
            return self.space
        c = self.config
        return build_space(self.inputs.model, target.input_shape, model_spec=c.model,
                           ignore_layers=c.ignore_layers).with_removal(c.block_removal)

    def meter(self, target: DeployTarget, dense_ms: float | None = None) -> TargetMeter:
        """``target``'s engines measured against its dense engine (built by the dense stage), aiming as much lower
        as the final stage's re-solves asked (:meth:`RunState.retry`)."""
        from itcp_deploy.pipeline.meter import TargetMeter

        loop, dense = self.config.loop, Path(self.state.done("dense")["targets"][target.name])
        factor = math.prod(r["aim_factor"].get(target.name, 1.0) for r in self.state.retries)
        return TargetMeter(target.engine, target.latency.tightened(factor), dense, loop.timing,
                           loop.max_timing_rounds, dense_ms)


def stage_dense(ctx: RunContext) -> dict:
    """Every target's dense engine; MACs, parameters and the dense accuracy once (at the first target's
    shape); the space."""
    from itcp_deploy.engines.build import build_engine
    from itcp_deploy.pruning import count_macs_params

    c, model = ctx.config, ctx.inputs.model
    dense = {t.name: str(build_engine(model, t.input_shape, ctx.folder.target(t.name).root, TargetFiles.DENSE,
                                      t.engine_at()).artifact) for t in c.targets}
    macs, params = count_macs_params(model, c.input_shape)
    write_json(ctx.folder.space, ctx.space.to_dict())
    return {"targets": dense, "macs": macs, "params": params, "accuracy": ctx.inputs.accuracy(model)}


def stage_profile(ctx: RunContext) -> dict:
    """Profile every target (engines cached across runs in ``--cache``; a target's finished profile is kept
    when the stage resumes), or reuse the given profile."""
    from itcp_deploy.profiling.records import Profile

    c, out = ctx.config, {}
    for t in c.targets:
        path = ctx.folder.target(t.name).profile
        space = ctx.target_space(t).with_removal(False)  # profiled at widths > 0; removal: on_space
        if c.profile.profile_path:
            obtain_profile(ctx.inputs.model, space, t.engine, c.profile, path, ctx.log).save(path)
            out[t.name] = {"builds": Profile.load(path).builds, "reused": c.profile.profile_path}
        elif path.exists():
            out[t.name] = {"builds": Profile.load(path).builds, "resumed": True}
        else:
            focus = _focus(ctx, t)
            ctx.log(f"profile {t.describe()}: up to {c.profile.max_builds} engines, half the designs near "
                    f"{focus:.2f} of the dense latency (the SLA) ...")
            profile, summary = profile_engines(ctx.inputs.model, space, t.engine, c.profile, seed=c.seed,
                                               progress=ctx.progress, focus=focus)
            profile.save(path)
            out[t.name] = {"builds": profile.builds, "builds_new": summary.builds_new, "noise_pct": summary.noise_pct,
                           "session_noise_pct": summary.session_noise_pct, "measurements_new": summary.measurements_new}
    return out


def _focus(ctx: RunContext, target: DeployTarget) -> float:
    """The fraction of the dense engine's latency the SLA asks for: a speed-up's inverse, or the SLA in ms
    over the dense engine measured."""
    if target.latency.sla_ms is None:
        return 1.0 / float(target.latency.speedup or 1.0)
    return min(1.0, float(target.latency.sla_ms) / ctx.meter(target).dense_ms())


def stage_fit(ctx: RunContext) -> dict:
    """Fit (or reuse) every target's perf model on its own profile, then put it on the run's space at the
    target's shape (width 0 where blocks may be removed, as the scores are)."""
    from itcp_deploy.perfmodel.model import on_space
    from itcp_deploy.profiling.records import Profile

    settings, out = ctx.config.profile, {}
    for t in ctx.config.targets:
        files = ctx.folder.target(t.name)
        if settings.perf_model_path:
            model = reuse_perf_model(Path(settings.perf_model_path), t.engine, settings)
        else:  # a fit above its bar does not stop the run: the closed loop measures every plan (issue 24)
            model = fit_perf_model(Profile.load(files.profile), replace(settings, force_fit=True), files.perf_model)
            if model.report and model.report.rejected:
                ctx.log(f"note: {t.name}: perf model held-out error {model.report.mape_pct:.1f}% is above "
                        f"{model.report.threshold_pct:.1f}%; going on, the closed loop measures every plan")
        model = on_space(model, ctx.target_space(t))
        model.save(files.perf_model)
        out[t.name] = {"report": asdict(model.report) if model.report else None}
    return out


def score_batches(config: RunConfig) -> int:
    """Batches of the score loader the scores and the kept channels read: ``score_samples`` images' worth."""
    return max(1, -(-config.score_samples // config.recipe.batch_size))


def criteria(ctx: RunContext):
    """The score and importance the run uses: data-free ones where the model gives no logits and no loss_fn."""
    from itcp_deploy.pruning.output_kind import Criteria, criteria_for, own_loss_applies

    c = ctx.config
    # the user's loss applies to any output; a detector's own training loss to labelled boxes
    if ctx.inputs.loss_fn is not None or own_loss_applies(ctx.inputs.model, ctx.inputs.batches(1)[0][1]):
        return Criteria(c.criterion, c.importance)
    return criteria_for(ctx.inputs.model, c.input_shape, c.criterion, c.importance)


def stage_scores(ctx: RunContext) -> dict:
    from itcp_deploy.pruning import group_scores

    c, inputs, chosen = ctx.config, ctx.inputs, criteria(ctx)
    if chosen.note:
        ctx.log(f"note: {chosen.note}")
    batches = inputs.batches(score_batches(c))
    importance = channel_importance_of(ctx) if chosen.score == chosen.importance == "taylor" else None
    if importance is not None:  # one gradient pass for the scores and the kept channels
        ctx.folder.write_arrays(ctx.folder.importance, importance)
    scores = group_scores(inputs.model, ctx.space, chosen.score, loader=batches,
                          calib_loader=inputs.eval_loader or batches, cache_path=ctx.folder.sensitivity_cache,
                          loss_fn=inputs.loss_fn, importance=importance)
    ctx.folder.write_arrays(ctx.folder.scores, scores)
    costs = int8_cost(ctx, batches)
    if costs is not None:
        write_json(ctx.folder.int8_cost, costs)
    return {"criterion": chosen.score, "note": chosen.note, "int8_cost_groups": len(costs or {})}


def int8_cost(ctx: RunContext, batches: list) -> dict[str, float] | None:
    """A mixed-precision run's INT8 cost of each group (:mod:`itcp_deploy.pruning.int8_cost`): the loss
    increase with that group alone at INT8, on the evaluation data (else the score batches), calibrated on
    the targets' calibration set; None for a run at one precision."""
    from itertools import islice

    from itcp_deploy.data.calibration import load_calibration
    from itcp_deploy.pruning.int8_cost import Int8Loss, int8_costs

    mixed = [t for t in ctx.config.targets if t.engine.precision == "mixed"]
    if not mixed:
        return None
    held = list(islice(ctx.inputs.eval_loader, len(batches))) if ctx.inputs.eval_loader is not None else batches
    calib = load_calibration(mixed[0].engine.calib, ctx.config.input_shape)
    with Int8Loss(ctx.inputs.model, ctx.space, calib, held) as loss:
        costs = int8_costs(loss)
    ctx.log("int8 cost per group (loss increase): " + ", ".join(f"{g} {v:.3g}" for g, v in costs.items()))
    return costs


def stage_loop(ctx: RunContext) -> dict:
    """The method's search with measured engines (its :class:`Strategy`), every target measured by its meter."""
    return ctx.strategy.loop(ctx, [ctx.meter(t) for t in ctx.config.targets])


def stage_finetune(ctx: RunContext) -> dict:
    """Make the accepted plan into a model (the method's: the one-shot recipe, or a peer's own pruned model),
    finetune once (the user's callable or the recipe's), save the pruned model."""
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.pruning import pruned_layer_widths, save_pruned

    inputs, folder, plan = ctx.inputs, ctx.folder, PruningPlan.load(ctx.folder.plan)
    pruned, refit = ctx.strategy.pruned(ctx, plan)
    acc_bn = inputs.accuracy(pruned)
    if inputs.finetune is not None:
        before = pruned_layer_widths(pruned, ctx.space)
        pruned = check_finetuned(inputs.finetune(pruned), before, lambda m: pruned_layer_widths(m, ctx.space))
    pruned = pruned.cpu().eval()
    acc = inputs.accuracy(pruned) if inputs.finetune is not None else acc_bn
    save_pruned(folder.pruned, pruned, plan, plan_path=folder.plan)
    return {"accuracy_pruned_bn": acc_bn, "accuracy_final": acc, "finetuned": inputs.finetune is not None,
            "compensated_layers": refit}


def one_shot(ctx: RunContext, widths: dict[str, int], importance: dict) -> tuple[nn.Module, list[str]]:
    """A plan's widths made into a model by the one-shot recipe: the channels of largest ``importance``
    (:func:`channel_importance_of`, computed once where many plans are made: the loop's rounds of a
    value-dependent engine) kept, least-squares compensation (when configured), BatchNorm re-estimated; returns
    it and the refit layers."""
    from itcp_deploy.pruning.compensate import OneShot, prune_one_shot

    c, inputs = ctx.config, ctx.inputs
    recipe = OneShot(inputs.batches(score_batches(c)), inputs.batches(c.recipe.bn_batches), c.recipe.bn_batches,
                     c.compensate)
    return prune_one_shot(inputs.model, ctx.space, widths, importance, recipe)


def channel_importance_of(ctx: RunContext) -> dict:
    """Each group's channel importance under the run's criterion (Taylor on the score batches, else the weights);
    the scores stage's, where it took the same Taylor gradients (a pass of ResNet-50 at 224 takes minutes)."""
    from itcp_deploy.pruning import channel_importance

    c, inputs, importance = ctx.config, ctx.inputs, criteria(ctx).importance
    if importance == "taylor" and ctx.folder.importance.is_file():
        return ctx.folder.read_arrays(ctx.folder.importance)
    batches = inputs.batches(score_batches(c)) if importance == "taylor" else None
    return channel_importance(inputs.model, ctx.space, importance, loader=batches, loss_fn=inputs.loss_fn)


def restore_pruned(model: nn.Module, config: RunConfig, folder: RunFolder) -> nn.Module:
    """The saved pruned model rebuilt on the dense ``model`` (its structure cut to the plan's widths, any width
    a method chose, then the saved weights): works for any module object, spec or not."""
    import torch

    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.pruning import apply_widths, build_space
    from itcp_deploy.pruning.persist import ANY_WIDTH

    space = build_space(model, config.input_shape, model_spec=config.model, grid=ANY_WIDTH,
                        ignore_layers=config.ignore_layers).with_removal()
    pruned = apply_widths(model, space, PruningPlan.load(folder.plan).widths, importance="l1")
    pruned.load_state_dict(torch.load(folder.pruned, map_location="cpu", weights_only=True))
    return pruned.eval()


def stage_final(ctx: RunContext) -> dict:
    """Build the finetuned model's engine for every target and measure each interleaved with its dense engine,
    judged by that target's SLA."""
    from itcp_deploy.engines.build import build_engine
    from itcp_deploy.engines.mixed import group_layers
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.pruning import count_macs_params

    c, plan = ctx.config, PruningPlan.load(ctx.folder.plan)
    pruned = restore_pruned(ctx.inputs.model, c, ctx.folder)
    dense_ms = ctx.state.done("loop")["dense_measured_ms"]
    out = {}
    for t in c.targets:
        built = build_engine(pruned, t.input_shape, ctx.folder.target(t.name).root, TargetFiles.FINAL,
                             t.engine_at(group_layers(ctx.space, plan.int8_groups, plan.widths)))
        meter = ctx.meter(t, dense_ms[t.name])
        final, taken = meter.settle(built.artifact, c.loop.final_timing)
        verdict = meter.judge(final)
        if len(taken) > 1:
            ctx.log(f"final {t.name}: measured {taken[0].ratio:.3f} of dense, a miss; measured again: "
                    f"{taken[1].ratio:.3f}; kept the narrower spread ({final.ratio:.3f})")
        out[t.name] = {"artifact": str(built.artifact), "main_file": str(built.main_file or ""),
                       "final": asdict(final.latency.stats), "dense": asdict(final.dense), "ratio": final.ratio,
                       "measured_ms": verdict.measured_ms, "sla_ms": verdict.limit_ms, "met": verdict.met,
                       "measurements": [{"ratio": m.ratio, "ratio_spread": m.latency.ratio_spread,
                                         "timing_rounds": m.timing_rounds} for m in taken],
                       "engine_accuracy": _engine_accuracy(ctx, t, built.artifact, pruned)}
    macs, params = count_macs_params(pruned, c.input_shape)
    return {"targets": out, "macs": macs, "params": params}


def _engine_accuracy(ctx: RunContext, target: DeployTarget, artifact: Path, pruned: nn.Module) -> dict | None:
    """The engine's own top-1 and its agreement with the dense engine on the evaluation data (classifiers
    with the default loss, as the model's accuracy), and below FP32 with ``pruned``, the model it came from;
    or None."""
    from itcp_deploy.engines.evaluate import engine_quality

    if ctx.state.done("dense").get("accuracy") is None or ctx.inputs.eval_loader is None:
        return None
    images = next(iter(ctx.inputs.eval_loader))[0]
    if tuple(images.shape[1:]) != tuple(target.input_shape[1:]):  # e.g. 32x32 data, an engine built at 224
        return None
    dense = Path(ctx.state.done("dense")["targets"][target.name])
    return engine_quality(target.engine.backend, artifact, dense, target.engine.options, ctx.inputs.eval_loader,
                          source=pruned if target.engine.precision != "fp32" else None)


STAGES: list[tuple[str, Callable[[RunContext], dict]]] = [
    ("dense", stage_dense),
    ("profile", stage_profile),
    ("fit", stage_fit),
    ("scores", stage_scores),
    ("loop", stage_loop),
    ("finetune", stage_finetune),
    ("final", stage_final),
]
