"""What a pipeline run takes, as nested settings: the target, the engine, the finetuning recipe, the profile
settings and the closed-loop settings. The comparison benchmark (``bench/comparison``) uses the same recipe and
profile settings, so a comparison is profiled like a run."""

from __future__ import annotations

from dataclasses import dataclass, field

from itcp_deploy.engines.build import EngineSpec
from itcp_deploy.errors import UsageError
from itcp_deploy.names import check_engine, check_search
from itcp_deploy.pipeline.targets import DeployTarget, check_targets
from itcp_deploy.profiling.timing import TimingConfig
from itcp_deploy.target import LatencyTarget


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
    ``max_builds`` engines (``holdout`` of them held out; cached in ``cache_dir``) and fit."""

    cache_dir: str = "engines"
    profile_path: str | None = None
    perf_model_path: str | None = None
    max_builds: int = 32
    holdout: int = 10
    timing: TimingConfig = field(default_factory=TimingConfig)
    layer_runs: int = 300
    force_fit: bool = False


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
