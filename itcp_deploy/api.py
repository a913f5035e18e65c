"""The Python API: prune the ``nn.Module`` you hold, with your data loader, your loss and your training loop.

One call (the CLI's ``run`` runs the same stages through the same driver function, with its spec strings turned
into the objects first)::

    result = itcp_deploy.prune(model, torch.randn(1, 3, 32, 32), sla_ms=2.0, score_loader=loader,
                               finetune=my_training_loop, out_dir="out")
    result.model, result.engine_path, result.met_sla, result.widths

or staged, Torch-Pruning style: :func:`plan` (widths, predicted latency, Pareto front; the model untouched),
:func:`apply` (prunes in place), :func:`build_engine` (builds and measures). See ``docs/python_api.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from itcp_deploy.engines.base import EngineOptions
from itcp_deploy.engines.build import EngineSpec
from itcp_deploy.errors import UsageError
from itcp_deploy.pipeline import driver
from itcp_deploy.pipeline.config import DeployTarget, FinetuneRecipe, LoopSettings, ProfileSettings, RunConfig
from itcp_deploy.pipeline.report import RunReport
from itcp_deploy.pipeline.sources import Finetune, ModelInputs, builtin_finetune, check_model_input
from itcp_deploy.pipeline.stages import restore_pruned, score_batches
from itcp_deploy.plan import PruningPlan
from itcp_deploy.space import PruningSpace
from itcp_deploy.target import LatencyTarget

#: ``loss_fn(outputs, targets)`` -> scalar tensor; outputs may be a tensor, a tuple or a dict.
LossFn = Callable[[Any, Any], torch.Tensor]
Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PruneOptions:
    """Everything else ``itcp-deploy run`` takes, with its defaults. ``name``: the model's name in the plan
    and report (default: the class name and a digest of the weights, so that ``out_dir`` resumes only the
    same model); ``eval_loader``: test batches for the report's top-1 accuracy (classifiers with the default
    loss); ``profile``: default caches the profiled engines in ``OUT/cache``; ``recipe``: the built-in
    finetuning (its ``epochs`` unless :func:`prune` gets ``epochs=``; none by default) and the batches
    BatchNorm re-estimation reads; ``ignore_layers``: globs of layers whose output width is kept (a detection
    or segmentation head); ``compensate``: least-squares refit of the next layers after pruning;
    ``block_removal``: let the search remove residual branches (width 0); ``min_agreement``: a mixed-precision
    engine agreeing with its FP32 model on fewer evaluation images is solved again with its most sensitive INT8
    groups at FP32 (0, the default: off)."""

    name: str | None = None
    data: str = "python objects"
    weights: str | None = None
    num_classes: int | None = None
    trust_code: bool = False
    ignore_layers: tuple[str, ...] = ()
    compensate: bool = True
    block_removal: bool = True
    min_agreement: float = 0.0
    percentile: int = 50
    margin: float = 0.03
    engine: EngineOptions = field(default_factory=EngineOptions)
    calib: str | None = None
    criterion: str = "taylor"
    importance: str = "taylor"
    method: str = "itcp"
    recipe: FinetuneRecipe = field(default_factory=lambda: FinetuneRecipe(epochs=0, train_subset=None))
    profile: ProfileSettings | None = None
    loop: LoopSettings = field(default_factory=LoopSettings)
    score_samples: int = 512
    seed: int = 0
    quiet: bool = True
    eval_loader: Iterable[Any] | None = None
    log: Log | None = None
    progress: Progress | None = None


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` returns. ``measured_ms``: the final engine's latency as the SLA judges it (its own
    percentile for ``sla_ms``; the interleaved ratio to the dense engine x the dense latency for ``speedup``);
    ``predicted_ms``: the perf model's prediction for the plan; ``engine_path``: the file to deploy."""

    model: nn.Module
    engine_path: Path
    measured_ms: float
    predicted_ms: float
    sla_ms: float
    met_sla: bool
    widths: dict[str, int]
    report: RunReport


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` returns: the widths that meet the target (closed loop on measured engines), their
    predicted latency, the Pareto front (predicted ms, score) of the solve; ``space`` lets :func:`apply`
    cut a model to them."""

    widths: dict[str, int]
    predicted_ms: float
    sla_ms: float
    pareto: list[tuple[float, float]]
    pruning_plan: PruningPlan
    space: PruningSpace


@dataclass(frozen=True)
class EngineResult:
    """What :func:`build_engine` returns: the deployable file (or artifact directory), its latency
    (median, p90, p99 ms) and, given a reference engine, the median per-round ratio engine/reference."""

    engine_path: Path
    artifact: Path
    median_ms: float
    p90_ms: float
    p99_ms: float
    ratio_to_reference: float | None = None


def _name(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{type(model).__name__}@{digest.hexdigest()[:12]}"


def _config(model: nn.Module, targets: tuple[DeployTarget, ...], out_dir: str | Path, epochs: int | None,
            o: PruneOptions) -> RunConfig:
    profile = o.profile or ProfileSettings(cache_dir=str(Path(out_dir) / "cache"))
    recipe = o.recipe if epochs is None else replace(o.recipe, epochs=epochs)
    return RunConfig(model=o.name or _name(model), data=o.data, out_dir=str(out_dir), targets=targets,
                     weights=o.weights, num_classes=o.num_classes, trust_code=o.trust_code,
                     ignore_layers=tuple(o.ignore_layers), compensate=o.compensate, block_removal=o.block_removal,
                     min_agreement=o.min_agreement, criterion=o.criterion, importance=o.importance, method=o.method,
                     recipe=recipe, profile=profile, loop=o.loop, score_samples=o.score_samples, seed=o.seed,
                     quiet=o.quiet)


def _read_batches(inputs: ModelInputs, config: RunConfig) -> ModelInputs:
    """Read (and check) every batch the stages will use now, before any engine is built: a bad loader fails
    in a second, and a one-pass generator is read once."""
    inputs.batches(max(score_batches(config), config.recipe.bn_batches))
    return inputs


def _targets(shape: tuple[int, int, int, int], latency: LatencyTarget | None, backend: str, precision: str,
             targets: Sequence[DeployTarget] | None, o: PruneOptions) -> tuple[DeployTarget, ...]:
    """``targets`` as given, else the one target the SLA, backend and precision describe."""
    if targets:
        if latency is not None:
            raise UsageError("give sla_ms/speedup or targets=, not both", "put each SLA in its DeployTarget")
        return tuple(targets)
    if latency is None:
        raise UsageError("give exactly one of sla_ms and speedup", "e.g. sla_ms=2.0 or speedup=1.5")
    return (DeployTarget.named(EngineSpec(backend, precision, o.engine, o.calib), shape, latency),)


def _latency(sla_ms: float | None, speedup: float | None, o: PruneOptions) -> LatencyTarget | None:
    if sla_ms is None and speedup is None:
        return None
    return LatencyTarget(sla_ms=sla_ms, speedup=speedup, percentile=o.percentile, margin=o.margin)


def prune(model: nn.Module, example_input: torch.Tensor, *, sla_ms: float | None = None,
          speedup: float | None = None, backend: str = "onnxruntime", precision: str = "fp32",
          targets: Sequence[DeployTarget] | None = None, score_loader: Iterable[Any], loss_fn: LossFn | None = None,
          finetune: Finetune | None = None, epochs: int | None = None, out_dir: str | Path,
          options: PruneOptions | None = None) -> PruneResult:
    """Prune ``model`` to the most accurate widths whose engine meets the latency SLA, finetune, build the
    engine and measure it. ``model`` is left untouched; the pruned copy is in the result.

    Args:
        model: The trained network (eval mode, or batch > 1 if it has BatchNorm).
        example_input: One input batch; its shape is the engine's input shape.
        sla_ms, speedup: The SLA in ms, or as dense latency / speedup (exactly one).
        backend, precision: The engine (``onnxruntime``/``tensorrt``/``torch``; ``fp32``/``fp16``/``int8``, or
            ``mixed``: each group FP32 or INT8, chosen with the widths in one solve; ``report.int8_groups``).
        targets: Instead of the four above: several :class:`DeployTarget` s (engine, input shape, SLA), one
            set of weights that meets every SLA (``--method itcp``); their shapes differ only in the batch.
        score_loader: Any iterable of ``(inputs, targets)`` batches: group scores, kept channels, BatchNorm
            re-estimation. Read once, up front; the first ``max(score_samples / batch, recipe.bn_batches)``
            batches are kept in memory (the built-in recipe iterates it again).
        loss_fn: ``loss_fn(model(inputs), targets)``; defaults to cross-entropy.
        finetune: ``finetune(pruned) -> pruned``: your own training loop; it must keep the widths.
        epochs: Without ``finetune``: epochs of the built-in SGD recipe over ``score_loader`` (default none).
        out_dir: Engines, report, plan and profile cache; a rerun with the same settings resumes.
        options: Everything else (percentile, threads, criterion, profiling and closed-loop settings).

    Raises:
        UsageError: bad objects or settings (one line); InfeasibleError: the SLA is below the fastest plan.
    """
    o = options or PruneOptions()
    shape = check_model_input(model, example_input)
    if finetune is not None and epochs:
        raise UsageError("give finetune= or epochs=, not both", "drop epochs= to use your own training loop")
    config = _config(model, _targets(shape, _latency(sla_ms, speedup, o), backend, precision, targets, o), out_dir,
                     epochs, o)
    inputs = _read_batches(ModelInputs(model, score_loader, loss_fn, finetune, o.eval_loader), config)
    if finetune is None and config.recipe.epochs > 0:
        inputs.finetune = builtin_finetune(inputs, config.recipe.epochs, config.recipe.lr)
    ctx = driver.run_stages(config, inputs, o.log, o.progress)
    report = driver.report_of(ctx)
    first = report.targets[0]
    return PruneResult(model=restore_pruned(model, config, ctx.folder),
                       engine_path=(ctx.folder.root / first["engine"]).resolve(),
                       measured_ms=first["measured_ms"], predicted_ms=report.predicted_latency_ms,
                       sla_ms=report.sla_ms, met_sla=report.met_sla, widths=dict(report.widths), report=report)


def plan(model: nn.Module, example_input: torch.Tensor, target: LatencyTarget, *,
         score_loader: Iterable[Any], loss_fn: LossFn | None = None, backend: str = "onnxruntime",
         precision: str = "fp32", out_dir: str | Path, options: PruneOptions | None = None) -> Plan:
    """The widths that meet ``target``, without touching ``model``: the stages of :func:`prune` up to the
    closed loop (profile, fit, scores, search -> build -> measure -> correct). The same ``out_dir`` and
    settings let a later :func:`prune` resume after them."""
    o = options or PruneOptions()
    shape = check_model_input(model, example_input)
    config = _config(model, _targets(shape, target, backend, precision, None, o), out_dir, None, o)
    inputs = _read_batches(ModelInputs(model, score_loader, loss_fn, None, o.eval_loader), config)
    ctx = driver.run_stages(config, inputs, o.log, o.progress, until="loop")
    chosen = PruningPlan.load(ctx.folder.plan)
    loop = ctx.state.done("loop") or {}
    return Plan(widths=dict(chosen.widths), predicted_ms=float(chosen.predicted_ms or 0.0),
                sla_ms=float(loop["sla_ms"][config.targets[0].name]), pareto=list(chosen.pareto),
                pruning_plan=chosen, space=ctx.space)


def apply(model: nn.Module, plan: Plan, *, score_loader: Iterable[Any] | None = None,
          loss_fn: LossFn | None = None) -> nn.Module:
    """Prune ``model`` in place to ``plan``'s widths (Torch-Pruning); keeps the channels with the largest
    Taylor importance over ``score_loader`` (the L1 norm without one). Returns ``model``."""
    from itcp_deploy.pruning.apply import apply_widths

    loader = ModelInputs(model, score_loader).batches(4) if score_loader is not None else None
    return apply_widths(model, plan.space, plan.widths, importance="taylor" if loader else "l1", loader=loader,
                        loss_fn=loss_fn, inplace=True)


def build_engine(model: nn.Module, example_input: torch.Tensor, *, out_dir: str | Path, backend: str = "onnxruntime",
                 precision: str = "fp32", name: str = "model", reference: Path | None = None,
                 engine: EngineOptions | None = None) -> EngineResult:
    """Export ``model`` (ONNX, verified against torch), build the engine into ``out_dir`` and measure it
    (interleaved with ``reference``, e.g. the dense engine, when given) with the project's one timing
    routine."""
    from itcp_deploy.engines.build import build_engine as build
    from itcp_deploy.profiling.engine_timing import measure_engines
    from itcp_deploy.profiling.timing import TimingConfig

    shape = check_model_input(model, example_input)
    spec = EngineSpec(backend, precision, engine or EngineOptions())
    built = build(model, shape, Path(out_dir), name, spec)
    timing = TimingConfig(warmup=50, rounds=20, runs_per_round=50)
    measured = measure_engines(backend, [built.artifact], spec.options, timing, reference=reference)
    latency = measured.engines[0]
    s = latency.stats
    return EngineResult(built.main_file or built.artifact, built.artifact, s.median_ms, s.p90_ms, s.p99_ms,
                        latency.ratio)


def load(path: str | Path, model: nn.Module | None = None, *, weights: str | None = None,
         trust_code: bool = False) -> nn.Module:
    """The pruned model a run saved, in eval mode, for your own code: ``path`` is the run folder (``OUT/``) or
    its ``pruned.pt`` (``widths.json`` beside it says the widths). Zoo, torchvision and timm models rebuild from
    their name; for your own architecture pass ``model``, the dense module you pruned (left untouched): the
    file holds weights, never code."""
    from itcp_deploy.pipeline.run_dir import RunFolder
    from itcp_deploy.pruning.persist import load_pruned

    p = Path(path)
    folder = RunFolder(p if p.is_dir() else p.parent)
    state = p if p.is_file() else folder.pruned
    if not folder.plan.is_file():
        raise UsageError(f"{folder.plan} does not exist: {p} is not a pruned run's output",
                         "pass the -o folder of `itcp-deploy run` (or of prune()), or its pruned.pt")
    return load_pruned(state, folder.plan, weights=weights, trust_code=trust_code, base=model).eval()


__all__ = ["DeployTarget", "EngineResult", "Plan", "PruneOptions", "PruneResult", "apply", "build_engine", "load",
           "plan", "prune"]
