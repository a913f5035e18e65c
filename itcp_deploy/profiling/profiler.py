"""``profile_engines``: build and measure whole-network engines at designed width plans.

Each plan goes ``pruning.apply_widths`` -> :func:`~itcp_deploy.engines.build.build_chain` (export ->
precision -> backend build, the same chain as the pipeline's engines; torch builds from the module). Builds
are cached on disk and in the SQLite cache, committed one by one; latency is measured in interleaved rounds
over every engine still unmeasured (see :mod:`~itcp_deploy.profiling.timing`); per-layer times come from the
backend's in-context profile (onnxruntime session profiling, TensorRT ``IProfiler``; the profiler's per-node
cost removed, see :func:`split_layers`), or, for backends without one (torch), from isolated single-layer
modules timed once per layer signature (``layer_source="isolated"``). A rerun measures only what is missing;
raw samples and raw per-node times stay in the cache.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from itcp_deploy.digest import damaged_files, tree_checksums
from itcp_deploy.engines import Backend, EngineOptions, get_backend
from itcp_deploy.engines.build import ChainPaths, EngineSpec, build_chain
from itcp_deploy.engines.mixed import group_layers
from itcp_deploy.engines.precision import check_precision
from itcp_deploy.errors import InputFileError, UsageError
from itcp_deploy.profiling.cache import CacheKey, ProfileCache
from itcp_deploy.profiling.design import (
    DesignConfig,
    PlannedEngine,
    design_plans,
    engine_id,
    first_round,
    next_round,
    parse_shard,
    shard,
    with_precisions,
)
from itcp_deploy.profiling.identity import model_hash, profile_identity
from itcp_deploy.profiling.layer_split import LAYER_SECONDS, layer_of_node, layer_times, split_layers
from itcp_deploy.profiling.records import EngineMeasurement, Profile
from itcp_deploy.profiling.timing import TimingConfig, measure_interleaved, noise_pct, session_noise_pct, summarize
from itcp_deploy.space import PruningSpace

Progress = Callable[[str, int, int], None]
Judge = Callable[[Profile], tuple[bool, dict[str, float]]]  # see run_profiling


@dataclass(frozen=True)
class ProfileConfig:
    """Everything ``profile-engines`` needs besides the model and its space.

    ``calib``: name of a set in ``calib/`` or a path to its ``.npz`` (int8 only).
    ``layer_runs``: profiled runs per engine for per-layer times (onnxruntime reports whole microseconds,
    so many runs are averaged).
    ``shard``: ``"i/n"`` builds and measures only every n-th plan.
    ``noise_sessions``: sessions the dense engine is measured in, so that the noise floor includes how much a
    new session of an engine moves its median (:func:`~itcp_deploy.profiling.timing.session_noise_pct`).
    """

    backend: str = "onnxruntime"
    precision: str = "fp32"
    cache_dir: str = "engines"
    design: DesignConfig = field(default_factory=DesignConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    engine: EngineOptions = field(default_factory=EngineOptions)
    layer_runs: int = 300
    calib: str | None = None
    shard: str | None = None
    noise_sessions: int = 3


@dataclass
class ProfileSummary:
    """What one run did: new work versus reuse from the cache."""

    planned: int = 0
    builds_new: int = 0
    builds_cached: int = 0
    measurements_new: int = 0
    measurements_cached: int = 0
    builds_damaged: int = 0  # cached engines whose files no longer match their checksums: rebuilt
    noise_pct: float = float("nan")  # the larger of the split-half and the between-session noise
    session_noise_pct: float = float("nan")
    wall_s: float = 0.0
    build_s: list[float] = field(default_factory=list)
    rounds: int = 1  # adaptive profiling rounds


class _Run:
    """One profiling run's state: backend, cache, keys and counters."""

    def __init__(
        self, model, space: PruningSpace, config: ProfileConfig, cache: ProfileCache, progress: Progress
    ) -> None:
        self.model, self.space, self.config, self.cache, self.progress = model, space, config, cache, progress
        self.backend: Backend = get_backend(config.backend)
        self.summary = ProfileSummary()
        self.base = CacheKey(
            kind="build",
            **profile_identity(config),
            input_shape=tuple(space.input_shape),
            model_hash=model_hash(model),
            settings=json.dumps(
                {
                    "provider": config.engine.provider,
                    "device": config.engine.device,
                    "opt_level": config.engine.opt_level,
                    **self.backend.settings(config.engine),
                }
            ),
        )
        self.calib = None
        if self.backend.source == "torch" and config.precision != "fp32":
            raise UsageError(
                f"the torch backend profiles fp32 only, not {config.precision}",
                "use --backend onnxruntime or tensorrt for fp16/int8",
            )

    def key(self, plan: PlannedEngine, kind: str, settings: dict | None = None) -> CacheKey:
        widths = tuple(sorted(plan.widths.items()))
        int8 = {"int8_groups": list(plan.int8_groups)} if plan.int8_groups else {}  # a mixed engine's
        extra = {**json.loads(self.base.settings), **int8, **(settings or {})}
        return CacheKey(
            **{
                **asdict(self.base),
                "kind": kind,
                "widths": widths,
                "input_shape": self.base.input_shape,
                "settings": json.dumps(extra, sort_keys=True),
            }
        )

    def build(self, plan: PlannedEngine) -> dict:
        key = self.key(plan, "build")
        entry = self.cache.get(key)
        if entry is not None and self._intact(entry):
            self.summary.builds_cached += 1
            return entry
        from itcp_deploy.engines.export import onnx_node_to_module
        from itcp_deploy.pruning import apply_widths

        t0 = time.perf_counter()
        final = self.cache.artifact_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".build-", dir=final.parent) as tmp:
            pruned = apply_widths(self.model, self.space, plan.widths)
            staging = Path(tmp) / "artifact"
            mixed = self.config.precision == "mixed"  # the plan's widths: a probe's plan may remove a branch
            spec = EngineSpec(self.backend.name, self.config.precision, self._options(), self.config.calib,
                              group_layers(self.space, plan.int8_groups, plan.widths) if mixed else None)
            paths = ChainPaths(staging / "export.onnx", Path(tmp) / "model.onnx", staging)
            fp32, _ = build_chain(pruned, tuple(self.space.input_shape), spec, paths, calib=self._calib())
            node_to_module = onnx_node_to_module(fp32) if fp32 is not None else {}
            with contextlib.suppress(OSError):  # an identical artifact from another process may already be there
                staging.rename(final)
            if not final.exists():
                raise InputFileError(f"could not move the built engine to {final}", "check that --cache is writable")
        entry = {
            "artifact": str(final.relative_to(self.cache.dir)),
            "build_s": time.perf_counter() - t0,
            "node_to_module": node_to_module,
            "checksums": tree_checksums(final),
        }
        self.cache.put(key, entry)
        self.summary.builds_new += 1
        self.summary.build_s.append(entry["build_s"])
        return entry

    def _intact(self, entry: dict) -> bool:
        """The cached engine exists and matches its build-time checksums; a damaged one is removed (rebuilt)."""
        artifact = self.cache.dir / entry["artifact"]
        if artifact.exists() and damaged_files(artifact, entry.get("checksums", {})):
            self.summary.builds_damaged += 1
            shutil.rmtree(artifact, ignore_errors=True)
        return artifact.exists()

    def _options(self) -> EngineOptions:
        opts = asdict(self.config.engine)
        opts["timing_cache"] = opts["timing_cache"] or str(self.cache.dir / "tensorrt.timing-cache")
        return EngineOptions(**opts)

    def _calib(self):
        if self.config.precision not in ("int8", "mixed") or self.calib is not None:
            return self.calib
        from itcp_deploy.data.calibration import load_calibration

        self.calib = load_calibration(self.config.calib, self.space.input_shape)
        return self.calib

    def latency_key(self, plan: PlannedEngine, session: str | None = None, copy: int = 0) -> CacheKey:
        """``session``: measured in the session of exactly these engines (:func:`run_profiling`'s final one);
        ``copy``: the engine's ``copy``-th extra session there (the dense engine's, for the noise floor)."""
        t = self.config.timing
        settings = {"threads": self.config.engine.threads, "warmup": t.warmup, "rounds": t.rounds,
                    "runs_per_round": t.runs_per_round, "max_round_s": t.max_round_s,
                    **({"copy": copy} if copy else {})}
        return self.key(plan, "latency", {**settings, **({"session": session} if session else {})})

    def copies(self, plan: PlannedEngine) -> range:
        """The sessions ``plan`` is measured in: ``noise_sessions`` for the dense engine, else one."""
        return range(self.config.noise_sessions if plan.role == "dense" else 1)

    def layers_key(self, plan: PlannedEngine) -> CacheKey:
        return self.key(plan, "layers", {"threads": self.config.engine.threads, "layer_runs": self.config.layer_runs,
                                         "layer_seconds": LAYER_SECONDS})

    def measure_latency(self, plans: list[PlannedEngine], builds: dict[str, dict], session: str | None = None) -> None:
        """Measure the plans not measured yet (in ``session``, when given), interleaved; the dense engine also in
        more sessions of its own (:meth:`copies`, :func:`~itcp_deploy.profiling.timing.session_noise_pct`)."""
        wanted = [(p, c) for p in plans for c in self.copies(p)]
        todo = [(p, c) for p, c in wanted if self.cache.get(self.latency_key(p, session, c)) is None]
        self.summary.measurements_cached += len(wanted) - len(todo)
        if not todo:
            return
        self.progress("measure", 0, len(todo))
        with contextlib.ExitStack() as stack:
            runners = [stack.enter_context(self.backend.runner(self.cache.dir / builds[p.engine_id]["artifact"],
                                                               self._options())) for p, _ in todo]
            result = measure_interleaved(runners, None, self.config.timing)
        for (plan, copy), samples in zip(todo, result.samples_ms, strict=True):
            self.cache.put(self.latency_key(plan, session, copy), {"samples_ms": samples})
        self.summary.measurements_new += len(todo)
        self.progress("measure", len(todo), len(todo))

    def measure_layers(self, plan: PlannedEngine, build: dict, runs: int, warmup: int) -> dict:
        """Node times (cached), each node's layer attributed anew: cached times outlive an attribution fix."""
        key = self.layers_key(plan)
        artifact = self.cache.dir / build["artifact"]
        entry = self.cache.get(key)
        if entry is not None:
            self.summary.measurements_cached += 1
            raw = entry["raw_ms"]
        else:
            with self.backend.runner(artifact, self._options()) as runner:
                raw = runner.layer_times_ms(runner.random_feeds(), runs, warmup)
            raw = raw or {}
            self.cache.put(key, {"raw_ms": raw})
            self.summary.measurements_new += 1
        nodes = self.backend.layer_nodes(list(raw), artifact, artifact / "export.onnx")
        return {"raw_ms": raw, "node_module": {name: layer_of_node(build["node_to_module"], nodes.get(name))
                                               for name in raw}}


def _measure_round(run: _Run, plans: list[PlannedEngine], started: float, session: str | None = None) -> Profile:
    """Build and measure every plan not in the cache yet; the profile of all of ``plans`` (their latencies from
    ``session``, when given)."""
    run.summary.planned = len(plans)
    builds = {}
    for i, plan in enumerate(plans):
        run.progress("build", i, len(plans))
        builds[plan.engine_id] = run.build(plan)
    run.progress("build", len(plans), len(plans))
    run.measure_latency(plans, builds, session)
    measured = {p.engine_id: summarize([run.cache.get(run.latency_key(p, session))["samples_ms"]]) for p in plans}
    layers = layer_times(run, plans, builds, run.progress, session,
                         {e: stats.stats[0].median_ms for e, stats in measured.items()})
    engines = []
    for plan in plans:
        stats = measured[plan.engine_id]
        entry = layers[plan.engine_id]
        if "raw_ms" in entry:
            entry = split_layers(entry["raw_ms"], entry["node_module"], stats.stats[0].median_ms,
                                 run.backend.per_node_profiler_cost)
        engines.append(EngineMeasurement(engine_id=plan.engine_id, widths=plan.widths, role=plan.role,
                                         latency=stats.stats[0], layer_ms=entry["layer_ms"],
                                         other_ms=entry["other_ms"], round_medians_ms=stats.round_medians_ms[0],
                                         int8_groups=plan.int8_groups))
    dense = [p for p in plans if p.role == "dense"][:1]
    run.summary.session_noise_pct = session_noise_pct(
        [summarize([run.cache.get(run.latency_key(p, session, c))["samples_ms"]]).stats[0].median_ms
         for p in dense for c in run.copies(p)])
    both = (noise_pct([e.round_medians_ms for e in engines]), run.summary.session_noise_pct)
    run.summary.noise_pct = max((v for v in both if math.isfinite(v)), default=math.nan)
    run.summary.wall_s = time.perf_counter() - started
    return Profile(model=run.space.model, input_shape=tuple(run.space.input_shape), backend=run.backend.name,
                   backend_version=run.base.backend_version, precision=run.config.precision,
                   quantization=run.base.quantization, device=run.base.device, space=run.space, engines=engines,
                   layer_source="in-context" if run.backend.in_context_layers else "isolated",
                   builds=len(engines), wall_s=run.summary.wall_s, noise_pct=run.summary.noise_pct)


def run_profiling(
    model, space: PruningSpace, config: ProfileConfig | None = None, progress: Progress | None = None,
    judge: Judge | None = None,
) -> tuple[Profile, ProfileSummary]:
    """:func:`profile_engines`, also returning what this run built and measured anew.

    ``judge(profile) -> (good enough, weight per layer)``: with it (and ``config.design.adaptive``, no shard),
    profiling goes in rounds until the judge is satisfied or ``max_builds`` are spent
    (:mod:`~itcp_deploy.profiling.design`); ``itcp_deploy.perfmodel.fit.judge`` is the perf model's. After more
    than one round, every engine is measured again in one interleaved session, and the profile's latencies
    are that session's: the load differs between the rounds' windows, and not alike for every engine (at a
    load of 5-10, ShuffleNet-V2's dense engine at 224 measured 2.9 ms in one window and 4.8-22.8 ms in later
    ones; scaling later rounds by its drift made the held-out error 43%). The judge's "good" is confirmed on
    that session before profiling stops (MNASNet at 224 stopped at 1.9% and fitted 2.6% on it)."""
    config = config or ProfileConfig()
    check_precision(config.precision)
    progress = progress or (lambda stage, done, total: None)
    t0 = time.perf_counter()
    adaptive = judge is not None and config.design.adaptive and config.shard is None
    plans = with_precisions(first_round(space, config.design) if adaptive else design_plans(space, config.design),
                            space, config)
    plans = plans if adaptive else shard(plans, *parse_shard(config.shard))
    with ProfileCache(config.cache_dir) as cache:
        run = _Run(model, space, config, cache, progress)
        run._calib()  # a missing or mismatched int8 calibration set fails before any build
        confirmed: list[PlannedEngine] = []
        for round_index in itertools.count(1):
            profile = _measure_round(run, plans, t0)
            if not adaptive or len(plans) >= config.design.max_builds:
                break
            good, weights = judge(profile)
            if good and round_index > 1:  # stop on the numbers the model is fitted on: the one window below
                profile, confirmed = _one_window(run, plans, t0), plans
                good, weights = judge(profile)
            more = with_precisions(next_round(space, plans, weights, config.design, round_index), space, config)
            if good or more == plans:
                break
            plans = more
        if round_index > 1 and confirmed is not plans:
            profile = _one_window(run, plans, t0)
    run.summary.rounds = round_index
    return profile, run.summary


def _one_window(run: _Run, plans: list[PlannedEngine], started: float) -> Profile:
    return _measure_round(run, plans, started, engine_id({p.engine_id: 0 for p in plans}))


def measure_plans(model, space: PruningSpace, widths: list[dict[str, int]], config: ProfileConfig | None = None,
                  role: str = "plan", reference_ms: float | None = None,
                  int8_groups: list[tuple[str, ...]] | None = None) -> list[EngineMeasurement]:
    """Build and measure width plans (e.g. the search's) as a profile's engines, for :func:`~itcp_deploy.perfmodel.
    fit.refit`, interleaved with the dense engine in a session of their own (measured again while that engine
    runs contended, :meth:`LatencyStats.slowdown`); ``reference_ms``, the dense latency of the profile they join,
    puts them on its scale (another window put a plan 28% under its prediction on a MobileNet-V3 at 224).
    ``int8_groups``: per plan, its INT8 groups (mixed)."""
    config = replace(config or ProfileConfig(), noise_sessions=1)  # the profile's noise floor is the profile's
    mixed = config.precision == "mixed"  # a plan's id hashes its INT8 groups, as the design's do
    full = space.full_widths()
    plans = [PlannedEngine(engine_id(full, () if mixed else None), "dense", full)]
    for w, int8 in zip(widths, int8_groups or [()] * len(widths), strict=True):
        plan = {g.name: space.complete(w)[g.name] for g in space.groups}
        pid = engine_id(plan, tuple(sorted(int8)) if mixed else None)
        plans += [PlannedEngine(pid, role, plan, tuple(sorted(int8)))] if pid != plans[0].engine_id else []
    with ProfileCache(config.cache_dir) as cache:
        run = _Run(model, space, config, cache, lambda stage, done, total: None)
        session = "plans-" + engine_id({p.engine_id: 0 for p in plans})
        sessions = []
        for attempt in range(PLAN_SESSIONS):
            sessions.append(_measure_round(run, plans, time.perf_counter(), session + (f"-{attempt}" * bool(attempt))))
            if sessions[-1].engines[0].latency.slowdown() <= CONTENDED:
                break
    profile = min(sessions, key=lambda p: p.engines[0].latency.slowdown())
    factor = reference_ms / profile.engines[0].latency.median_ms if reference_ms else 1.0
    return [e.scaled(factor) for e in profile.engines if e.role == role]


PLAN_SESSIONS = 3  # measure_plans' sessions at most, while the dense engine's runs are contended
CONTENDED = 1.25  # its median over its fastest run (LatencyStats.slowdown): about 1.02-1.1 on an idle core


def profile_engines(
    model, space: PruningSpace, config: ProfileConfig | None = None, progress: Progress | None = None
) -> Profile:
    """Build and measure engines at the designed width plans of ``space`` (see the module docstring): ``model``
    the trained dense module, ``space`` its pruning space (``pruning.build_space``), ``config`` the backend,
    precision, cache, design and timing; ``progress(stage, done, total)`` (build, measure, layers, isolated).
    The profile's ``noise_pct`` is an engine median's reproducibility in percent (split-half,
    :func:`~itcp_deploy.profiling.timing.noise_pct`). Raises CacheError (a corrupt cache or another schema, left
    untouched) and MissingDependencyError (the backend is not installed or needs a GPU)."""
    return run_profiling(model, space, config, progress)[0]


def profile_model(
    spec: str, input_shape: tuple[int, int, int, int], config: ProfileConfig | None = None, *,
    weights: str | None = None, trust_code: bool = False, progress: Progress | None = None,
    ignore_layers: tuple[str, ...] = (), judge: Judge | None = None,
) -> tuple[Profile, ProfileSummary]:
    """Create the model from a spec (``itcp_deploy.models.create_model``), build its pruning space (groups of
    ``ignore_layers`` fixed), profile it (what ``itcp-deploy profile-engines`` runs; ``judge``: see
    :func:`run_profiling`)."""
    import torch

    from itcp_deploy.models import create_model
    from itcp_deploy.pruning import build_space

    torch.set_num_threads((config or ProfileConfig()).engine.threads)
    model = create_model(spec, weights=weights, trust_code=trust_code).eval()
    space = build_space(model, input_shape, model_spec=spec, ignore_layers=ignore_layers)
    return run_profiling(model, space, config, progress, judge)
