"""What a pipeline run takes, as nested settings: the target, the engine, the finetuning recipe, the profile
settings and the closed-loop settings. ``run`` (and ``profile-engines --sla-ms``) and ``compare``
(:class:`CompareConfig`) share the recipe and profile settings, so a comparison is profiled like a run."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from itcp_deploy.digest import input_digests
from itcp_deploy.engines.build import EngineSpec
from itcp_deploy.errors import UsageError
from itcp_deploy.names import check_engine, check_search
from itcp_deploy.pipeline.targets import DeployTarget, check_targets
from itcp_deploy.profiling.timing import TimingConfig
from itcp_deploy.target import LatencyTarget

COMPENSATED = "+comp"  # compare's method suffix: least-squares compensation after pruning
REMOVAL = "+rm"  # compare's method suffix: block removal (width 0 for residual branches) allowed


@dataclass(frozen=True)
class Levers:
    """A comparison method read as its search method and the levers its suffixes switch on."""

    base: str
    compensate: bool = False
    remove: bool = False


def levers(method: str) -> Levers:
    """``"itcp+rm+comp"`` -> ``Levers("itcp", compensate=True, remove=True)`` (suffixes in any order)."""
    base, found = method, set()
    while (suffix := next((s for s in (COMPENSATED, REMOVAL) if base.endswith(s)), None)) is not None:
        base, found = base.removesuffix(suffix), found | {suffix}
    return Levers(base, COMPENSATED in found, REMOVAL in found)


@dataclass(frozen=True)
class FinetuneRecipe:
    """How a pruned model is finetuned. ``train_subset``: images (a seeded subset per seed) per epoch, all if
    None; ``test_samples``: evaluate on a fixed seeded subset of the test split, all if None; ``bn_batches``:
    training batches that re-estimate BatchNorm statistics after pruning; ``distill``: learn from the dense
    model too (on by default: it won at equal epochs, docs/benchmarks.md section 10); ``train_time_s``: stop
    after the epoch in which this much wall time has passed."""

    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 64
    train_subset: int | None = 10000
    test_samples: int | None = None
    bn_batches: int = 20
    distill: bool = True
    train_time_s: float | None = None


@dataclass(frozen=True)
class ProfileSettings:
    """How the perf model is obtained: reuse ``profile_path`` / ``perf_model_path`` when given, else profile
    ``max_builds`` engines (``holdout`` of them held out; cached in ``cache_dir``) and fit. ``adaptive``:
    ``max_builds`` is a budget; profiling stops once the perf model's held-out error meets its bar
    (``profiling/design.py``)."""

    cache_dir: str = "engines"
    profile_path: str | None = None
    perf_model_path: str | None = None
    max_builds: int = 32
    holdout: int = 10
    timing: TimingConfig = field(default_factory=TimingConfig)
    layer_runs: int = 300
    force_fit: bool = False
    adaptive: bool = True


@dataclass(frozen=True)
class LoopSettings:
    """The closed loop: accept a plan whose measured latency is within ``[accept_low * target, target]``,
    else re-solve with a budget corrected from every round (``pipeline/budget_search.py``), at most
    ``max_rounds`` times; ``bins``: budget resolution of the DP; ``timing`` measures each round,
    ``final_timing`` the final engine."""

    accept_low: float = 0.9
    max_rounds: int = 4
    bins: int = 1000
    max_timing_rounds: int = 100  # a noisy round is re-measured with up to this many timing rounds
    timing: TimingConfig = field(default_factory=lambda: TimingConfig(warmup=50, rounds=20, runs_per_round=50))
    final_timing: TimingConfig = field(
        default_factory=lambda: TimingConfig(warmup=100, rounds=30, runs_per_round=100))


@dataclass(frozen=True)
class RunConfig:
    """Everything ``itcp-deploy run`` takes. ``target``: the SLA (its margin: the closed loop aims at
    ``(1 - margin) * SLA``); ``criterion``: the group score; ``importance``: which channels pruning keeps;
    ``method``: ``itcp`` or a baseline search; ``score_samples``: images the scores use."""

    model: str
    data: str
    input_shape: tuple[int, int, int, int]
    out_dir: str
    target: LatencyTarget
    weights: str | None = None
    num_classes: int | None = None
    trust_code: bool = False
    ignore_layers: tuple[str, ...] = ()  # globs of layers whose output width is kept (pruning.build_space)
    engine: EngineSpec = field(default_factory=EngineSpec)
    criterion: str = "taylor"
    importance: str = "taylor"
    method: str = "itcp"
    recipe: FinetuneRecipe = field(default_factory=lambda: FinetuneRecipe(train_subset=None))
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)
    score_samples: int = 512
    seed: int = 0
    quiet: bool = False
    # least-squares refit after pruning (pruning/compensate.py); measured: +22.6 / +33.7 points one-shot on
    # ResNet-20 at 1.5x / 2x, +0.2 after one epoch at 2x (docs/benchmarks.md section 10)
    compensate: bool = True
    # width 0 for residual branches (pruning/removal.py); measured on ResNet-20 with compensation: +7.3 / +11.4
    # points one-shot at 2x / 3x (mean of 2 calibration seeds), docs/benchmarks.md section 10
    block_removal: bool = True
    # two or more: one plan for every target (pipeline/vector_loop.py); ``target``, ``engine`` and
    # ``input_shape`` then repeat the first target's, for the stages the targets share (dense accuracy, scores)
    targets: tuple[DeployTarget, ...] = ()

    def validate(self) -> None:
        """Checks that need more than one field (the target checks itself when it is built)."""
        if self.targets:
            check_targets(self.targets)
            for t in self.targets:
                check_engine(t.engine.backend, t.engine.precision)
        if self.recipe.epochs < 0:
            raise UsageError(f"--epochs must be >= 0, got {self.recipe.epochs}", "pass e.g. --epochs 1")
        if not 0 < self.loop.accept_low <= 1 or self.loop.max_rounds < 1:
            raise UsageError(f"accept_low must be in (0, 1] and max_rounds >= 1, got {self.loop.accept_low} and "
                             f"{self.loop.max_rounds}", "use the defaults (0.9, 4)")
        check_engine(self.engine.backend, self.engine.precision)  # names, before minutes of work
        check_search(self.method, self.criterion, self.importance)


@dataclass(frozen=True)
class CompareConfig:
    """What one comparison table needs (see :mod:`itcp_deploy.pipeline.compare`). ``speedups`` divide the
    perf model's predicted dense latency: every method is pruned to the same predicted budget before any
    engine is built."""

    model: str
    data: str
    out_dir: str
    weights: str | None = None
    speedups: tuple[float, ...] = (1.5, 2.0, 3.0)
    methods: tuple[str, ...] = ("itcp", "uniform", "flops", "global-magnitude", "knapsack-linear")
    seeds: tuple[int, ...] = (0,)
    criterion: str = "taylor"
    importance: str = "taylor"
    progressive_steps: int = 0
    recipe: FinetuneRecipe = field(default_factory=FinetuneRecipe)
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    measure_timing: TimingConfig = field(
        default_factory=lambda: TimingConfig(warmup=50, rounds=20, runs_per_round=50)
    )
    engine: EngineSpec = field(default_factory=EngineSpec)
    score_samples: int = 512
    bins: int = 1000
    threads: int = 1
    dense_finetune: bool = True  # False: the dense row keeps no finetuned accuracy (saves one epoch)
    calib_seed: int = 0  # which calibration images the scores, channel importance and compensation read
    measure_only: bool = False  # compute no row: measure every row already in OUT/rows, interleaved

    def validate(self) -> None:
        from itcp_deploy.pruning.tp_peer import is_peer
        from itcp_deploy.search.baselines import SEARCH_METHODS

        for m in self.methods:
            lever = levers(m)
            if is_peer(lever.base) and (lever.compensate or lever.remove):
                raise UsageError(f"{m}: Torch-Pruning's own pruner takes neither compensation (it does not report "
                                 "the kept channels) nor block removal", f"use {lever.base}")
            if not is_peer(lever.base):
                SEARCH_METHODS.get(lever.base)
        bad = [s for s in self.speedups if not math.isfinite(s) or s < 1]
        if bad or not self.speedups or not self.seeds:
            raise UsageError(
                f"need speed-ups >= 1 and at least one seed, got {self.speedups} / {self.seeds}",
                "pass e.g. --speedups 1.5 2 3 --seeds 0 1",
            )
        if self.recipe.epochs < 0 or self.progressive_steps < 0:
            raise UsageError("--epochs and --progressive must be >= 0",
                             "pass e.g. --epochs 1 --progressive 4")

    def fingerprint(self) -> dict:
        """The settings every row of one output directory must share (speed-ups, methods, seeds may grow)."""
        keep = ("model", "data", "weights", "criterion", "importance", "recipe", "score_samples", "bins",
                "engine")
        keep += ("calib_seed",) if self.calib_seed else ()  # 0: the fingerprint of tables made before it existed
        kept = json.loads(json.dumps({k: v for k, v in asdict(self).items() if k in keep}, default=str))
        return {**kept, "contents": input_digests({  # a path may hold other bytes on resume
            "weights": self.weights, "profile": self.profile.profile_path, "perf model": self.profile.perf_model_path,
            "data": self.data.partition(":")[2] or self.data})}
