"""The pipeline's stages as plain functions, shared by ``run`` and ``compare`` so that a comparison runs
exactly the pipeline's code: load the model and data, profile + fit the perf model, score the groups.

Each takes what it needs (settings dataclasses, the loaded :class:`Inputs`) and returns data; where results
go on disk is the caller's business (``run`` uses a :class:`~itcp_deploy.pipeline.run_dir.RunFolder`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from itcp_deploy.atomic_io import write_json
from itcp_deploy.engines.build import EngineSpec
from itcp_deploy.pipeline.config import ProfileSettings, RunConfig
from itcp_deploy.pipeline.run_dir import RunFolder, RunState
from itcp_deploy.pipeline.sources import ModelInputs, check_finetuned

if TYPE_CHECKING:
    from torch import nn

    from itcp_deploy.data import DatasetInfo
    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.profiling.profiler import ProfileConfig, ProfileSummary
    from itcp_deploy.profiling.records import Profile
    from itcp_deploy.space import PruningSpace

Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


@dataclass
class Inputs:
    """The dense model and the data every stage reads: the train split with and without augmentation
    (``plain``: scores, BatchNorm statistics) and the test split."""

    model: nn.Module
    train: DatasetInfo
    plain: DatasetInfo
    test: DatasetInfo

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, *self.train.input_size)

    def loader(self, batch_size: int, *, train: bool, seed: int = 0, max_samples: int | None = None):
        """A loader over ``plain`` (shuffled, seeded) or ``test`` (in order)."""
        from itcp_deploy.data import make_loader

        info = self.plain if train else self.test
        return make_loader(info, batch_size, shuffle=train, seed=seed, max_samples=max_samples)


@dataclass(frozen=True)
class ModelSource:
    """Where the dense model comes from: a model spec, its weights, the data spec."""

    model: str
    data: str
    weights: str | None = None
    num_classes: int | None = None
    trust_code: bool = False


def load_inputs(source: ModelSource, seed: int = 0) -> Inputs:
    """Load the data splits once and create the dense model (in eval mode)."""
    import torch

    from itcp_deploy.data import load_dataset
    from itcp_deploy.models import create_model

    torch.manual_seed(seed)
    train = load_dataset(source.data, "train")
    plain = load_dataset(source.data, "train", augment=False)
    test = load_dataset(source.data, "test")
    model = create_model(source.model, num_classes=source.num_classes or train.num_classes,
                         weights=source.weights, trust_code=source.trust_code).eval()
    return Inputs(model, train, plain, test)


def profile_config(engine: EngineSpec, settings: ProfileSettings, seed: int = 0) -> ProfileConfig:
    """The profiler's config for ``engine`` under ``settings``."""
    from itcp_deploy.profiling.design import DesignConfig
    from itcp_deploy.profiling.profiler import ProfileConfig

    return ProfileConfig(backend=engine.backend, precision=engine.precision, cache_dir=settings.cache_dir,
                         design=DesignConfig(max_builds=settings.max_builds, holdout=settings.holdout, seed=seed,
                                             adaptive=settings.adaptive),
                         timing=settings.timing, engine=engine.options, layer_runs=settings.layer_runs,
                         calib=engine.calib)


def profile_engines(model: nn.Module, space: PruningSpace, engine: EngineSpec, settings: ProfileSettings, *,
                    seed: int = 0, progress: Progress | None = None) -> tuple[Profile, ProfileSummary]:
    """Build and measure the designed engines of ``space`` (cached in ``settings.cache_dir``), in rounds until
    the perf model meets its bar or ``settings.max_builds`` are spent (``settings.adaptive``)."""
    from itcp_deploy.perfmodel.fit import judge
    from itcp_deploy.profiling.profiler import run_profiling

    return run_profiling(model, space, profile_config(engine, settings, seed), progress, judge)


def obtain_profile(model: nn.Module, space: PruningSpace, engine: EngineSpec, settings: ProfileSettings,
                   path: Path, log: Log, *, seed: int = 0, progress: Progress | None = None) -> Profile:
    """The profile at ``settings.profile_path`` (or ``path``) when it exists and was taken on this device with
    these settings (else :class:`InputFileError`), or a new one saved there."""
    from itcp_deploy.profiling.profiler import profile_identity
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
    from itcp_deploy.profiling.profiler import profile_identity
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


def score_groups(inputs: Inputs, model: nn.Module, space: PruningSpace, criterion: str, *, batch_size: int,
                 samples: int, seed: int = 0, cache_path: Path | None = None) -> dict[str, np.ndarray]:
    """Group scores of ``model`` over ``samples`` training images (held-out test images for ``sensitivity``)."""
    from itcp_deploy.pruning import group_scores

    loader = inputs.loader(batch_size, train=True, seed=seed, max_samples=samples)
    calib = inputs.loader(batch_size, train=False, max_samples=samples)
    return group_scores(model, space, criterion, loader=loader, calib_loader=calib, cache_path=cache_path)


# ---------------------------------------------------------------- the stages of `run`


@dataclass
class RunContext:
    """What the stages of one run share in memory (models are rebuilt from files on resume)."""

    config: RunConfig
    folder: RunFolder
    state: RunState
    inputs: ModelInputs
    space: PruningSpace
    log: Log
    progress: Progress | None = None


def stage_dense(ctx: RunContext) -> dict:
    """Build the dense engine, count MACs and params, measure the dense accuracy, save the space."""
    from itcp_deploy.engines.build import build_engine
    from itcp_deploy.pruning import count_macs_params

    c, model = ctx.config, ctx.inputs.model
    built = build_engine(model, c.input_shape, ctx.folder.root, "dense", c.engine)
    macs, params = count_macs_params(model, c.input_shape)
    accuracy = ctx.inputs.accuracy(model)
    write_json(ctx.folder.space, ctx.space.to_dict())
    return {"artifact": str(built.artifact), "macs": macs, "params": params, "accuracy": accuracy}


def stage_profile(ctx: RunContext) -> dict:
    c = ctx.config
    space = ctx.space.with_removal(False)  # engines are profiled at widths > 0; removal costs 0 (on_space)
    if c.profile.profile_path:
        profile = obtain_profile(ctx.inputs.model, space, c.engine, c.profile, ctx.folder.profile, ctx.log)
        profile.save(ctx.folder.profile)
        return {"builds": profile.builds, "reused": c.profile.profile_path}
    profile, summary = profile_engines(ctx.inputs.model, space, c.engine, c.profile, seed=c.seed,
                                       progress=ctx.progress)
    profile.save(ctx.folder.profile)
    return {"builds": profile.builds, "builds_new": summary.builds_new, "noise_pct": summary.noise_pct,
            "measurements_new": summary.measurements_new}


def stage_fit(ctx: RunContext) -> dict:
    """Fit (or reuse) the perf model, then put it on the run's space (width 0 where blocks may be removed)."""
    from itcp_deploy.perfmodel.model import on_space
    from itcp_deploy.profiling.records import Profile

    settings = ctx.config.profile
    if settings.perf_model_path:
        model = reuse_perf_model(Path(settings.perf_model_path), ctx.config.engine, settings)
    else:  # a fit above its bar does not stop the run: the closed loop measures every plan (issue 24)
        model = fit_perf_model(Profile.load(ctx.folder.profile), replace(settings, force_fit=True),
                               ctx.folder.perf_model)
        if model.report and model.report.rejected:
            ctx.log(f"note: perf model held-out error {model.report.mape_pct:.1f}% is above "
                    f"{model.report.threshold_pct:.1f}%; going on, the closed loop measures every plan")
    model = on_space(model, ctx.space)
    model.save(ctx.folder.perf_model)
    return {"report": asdict(model.report) if model.report else None}


def score_batches(config: RunConfig) -> int:
    """Batches of the score loader the scores and the kept channels read: ``score_samples`` images' worth."""
    return max(1, -(-config.score_samples // config.recipe.batch_size))


def _criteria(ctx: RunContext):
    """The score and importance the run uses: data-free ones where the model gives no logits and no loss_fn."""
    from itcp_deploy.pruning.output_kind import Criteria, criteria_for

    c = ctx.config
    if ctx.inputs.loss_fn is not None:  # the user's loss applies to any output
        return Criteria(c.criterion, c.importance)
    return criteria_for(ctx.inputs.model, c.input_shape, c.criterion, c.importance)


def stage_scores(ctx: RunContext) -> dict:
    from itcp_deploy.pruning import group_scores

    c, inputs, criteria = ctx.config, ctx.inputs, _criteria(ctx)
    if criteria.note:
        ctx.log(f"note: {criteria.note}")
    batches = inputs.batches(score_batches(c))
    scores = group_scores(inputs.model, ctx.space, criteria.score, loader=batches,
                          calib_loader=inputs.eval_loader or batches, cache_path=ctx.folder.sensitivity_cache,
                          loss_fn=inputs.loss_fn)
    ctx.folder.write_arrays(ctx.folder.scores, scores)
    return {"criterion": criteria.score, "note": criteria.note}


def stage_loop(ctx: RunContext) -> dict:
    from itcp_deploy.pipeline.closed_loop import LoopInputs, closed_loop
    from itcp_deploy.pipeline.peer_loop import peer_loop
    from itcp_deploy.pruning.tp_peer import is_peer

    c = ctx.config
    dense = Path(ctx.state.done("dense")["artifact"])
    if is_peer(c.method):
        batches = ctx.inputs.batches(score_batches(c))
        return peer_loop(LoopInputs(ctx.inputs.model, ctx.space, ctx.folder, c, dense, {}), batches, ctx.log)
    scores = ctx.folder.read_arrays(ctx.folder.scores)
    return closed_loop(LoopInputs(ctx.inputs.model, ctx.space, ctx.folder, ctx.config, dense, scores), ctx.log)


def stage_finetune(ctx: RunContext) -> dict:
    """Prune to the accepted plan, re-estimate BatchNorm, finetune once (the user's callable or the recipe's),
    save the pruned model."""
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.pruning import pruned_layer_widths, save_pruned
    from itcp_deploy.train import recalibrate_bn

    c, inputs, folder = ctx.config, ctx.inputs, ctx.folder
    plan = PruningPlan.load(folder.plan)
    pruned, refit = _pruned_for_finetuning(ctx, plan)
    recalibrate_bn(pruned, inputs.batches(c.recipe.bn_batches), num_batches=c.recipe.bn_batches)
    acc_bn = inputs.accuracy(pruned)
    if inputs.finetune is not None:
        before = pruned_layer_widths(pruned, ctx.space)
        pruned = check_finetuned(inputs.finetune(pruned), before, lambda m: pruned_layer_widths(m, ctx.space))
    pruned = pruned.cpu().eval()
    acc = inputs.accuracy(pruned) if inputs.finetune is not None else acc_bn
    save_pruned(folder.pruned, pruned, plan, plan_path=folder.plan)
    return {"accuracy_pruned_bn": acc_bn, "accuracy_final": acc, "finetuned": inputs.finetune is not None,
            "compensated_layers": refit}


def restore_pruned(model: nn.Module, space: PruningSpace, folder: RunFolder) -> nn.Module:
    """The saved pruned model rebuilt on the dense ``model`` (its structure cut to the plan's widths, then
    the saved weights): works for any module object, spec or not."""
    import torch

    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.pruning import apply_widths

    pruned = apply_widths(model, space, PruningPlan.load(folder.plan).widths, importance="l1")
    pruned.load_state_dict(torch.load(folder.pruned, map_location="cpu", weights_only=True))
    return pruned.eval()


def _pruned_for_finetuning(ctx: RunContext, plan) -> tuple[nn.Module, list[str]]:
    """The accepted plan applied to the dense model, compensated by least squares when configured (a peer
    method's own pruned model instead: its channel choice is kept); returns it and the refit layers."""
    from itcp_deploy.pipeline.peer_loop import PEER_MODEL
    from itcp_deploy.pruning import apply_widths, channel_importance, load_pruned
    from itcp_deploy.pruning.compensate import compensate, kept_channels
    from itcp_deploy.pruning.tp_peer import is_peer

    c, inputs, importance = ctx.config, ctx.inputs, _criteria(ctx).importance
    if is_peer(c.method):
        return load_pruned(ctx.folder.root / PEER_MODEL, plan, weights=c.weights, trust_code=c.trust_code).eval(), []
    loader = inputs.batches(score_batches(c)) if importance == "taylor" else None
    if not c.compensate:
        return apply_widths(inputs.model, ctx.space, plan.widths, importance=importance, loader=loader,
                            loss_fn=inputs.loss_fn), []
    imp = channel_importance(inputs.model, ctx.space, importance, loader=loader, loss_fn=inputs.loss_fn)
    pruned = apply_widths(inputs.model, ctx.space, plan.widths, importance=imp)
    calib = inputs.batches(score_batches(c))
    return pruned, compensate(pruned, inputs.model, ctx.space, kept_channels(inputs.model, ctx.space, plan.widths,
                                                                               imp), calib)


def stage_final(ctx: RunContext) -> dict:
    """Build the final engine and measure it interleaved with the dense engine."""
    from itcp_deploy.engines.build import build_engine
    from itcp_deploy.pipeline.closed_loop import measure_pair
    from itcp_deploy.pruning import count_macs_params, load_pruned
    from itcp_deploy.pruning.tp_peer import is_peer

    c, folder = ctx.config, ctx.folder
    pruned = (load_pruned(folder.pruned, folder.plan, weights=c.weights, trust_code=c.trust_code).eval()
              if is_peer(c.method) else restore_pruned(ctx.inputs.model, ctx.space, folder))  # a peer's widths
    built = build_engine(pruned, c.input_shape, folder.root, "model", c.engine)
    macs, params = count_macs_params(pruned, c.input_shape)
    dense = Path(ctx.state.done("dense")["artifact"])
    final, dense_stats = measure_pair(c, built.artifact, dense, c.loop.final_timing)
    return {"artifact": str(built.artifact), "main_file": str(built.main_file) if built.main_file else None,
            "macs": macs, "params": params, "final": asdict(final.stats), "dense": asdict(dense_stats),
            "ratio": final.ratio}


RUN_STAGES: list[tuple[str, Callable[[RunContext], dict]]] = [
    ("dense", stage_dense),
    ("profile", stage_profile),
    ("fit", stage_fit),
    ("scores", stage_scores),
    ("loop", stage_loop),
    ("finetune", stage_finetune),
    ("final", stage_final),
]
