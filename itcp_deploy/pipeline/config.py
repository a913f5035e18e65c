"""What a pipeline run takes, as nested settings: the deployment targets (engine, input shape, SLA; one or
more), the finetuning recipe, the profile settings and the closed-loop settings. The comparison benchmark
(``bench/comparison``) uses the same recipe and profile settings, so a comparison is profiled like a run."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from itcp_deploy.engines.build import EngineSpec
from itcp_deploy.errors import UsageError
from itcp_deploy.names import check_engine, check_search
from itcp_deploy.profiling.timing import TimingConfig
from itcp_deploy.target import LatencyTarget

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


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
    ``final_timing`` the final engine. ``final_retries``: how often a final engine that misses its SLA, though
    the loop measured its plan under the aim, sends the run back to the loop aiming lower by the difference
    (then finetuning and the final engine again; the method's step 5). ``precision_retries``: how often a
    mixed-precision engine under ``--min-agreement`` sends it back with more groups held at FP32: a re-solve
    narrows the widths to pay for them, and a narrower one-shot model has more near-ties: on three 4x one-shot
    plans the first re-solve lowered the agreement, two or three reached it (docs/benchmarks.md section 27)."""

    accept_low: float = 0.9
    max_rounds: int = 4
    bins: int = 1000
    max_timing_rounds: int = 100  # a noisy round is re-measured with up to this many timing rounds
    final_retries: int = 1
    precision_retries: int = 3
    timing: TimingConfig = field(default_factory=lambda: TimingConfig(warmup=50, rounds=20, runs_per_round=50))
    final_timing: TimingConfig = field(
        default_factory=lambda: TimingConfig(warmup=100, rounds=30, runs_per_round=100))


@dataclass(frozen=True)
class DeployTarget:
    """Where the plan's engine runs and the latency it must meet there: one engine (backend, precision,
    threads), one input shape (batch included) and one :class:`~itcp_deploy.target.LatencyTarget`. A run has
    one or more; several share one set of weights, each profiled, fitted, built and measured on its own.

    Example::

        DeployTarget("edge", EngineSpec("onnxruntime"), (1, 3, 32, 32), LatencyTarget(speedup=1.67))
    """

    name: str
    engine: EngineSpec
    input_shape: tuple[int, int, int, int]
    latency: LatencyTarget

    @classmethod
    def named(cls, engine: EngineSpec, input_shape: tuple[int, int, int, int], latency: LatencyTarget,
              index: int = 1) -> DeployTarget:
        """A target named after its engine, batch and threads (``onnxruntime-b1-1t-1``)."""
        return cls(f"{engine.backend}-b{input_shape[0]}-{engine.options.threads}t-{index}", engine, input_shape,
                   latency)

    def engine_at(self, int8_layers: tuple[str, ...] = ()) -> EngineSpec:
        """The engine of a plan that puts ``int8_layers`` (module names) at INT8: a mixed-precision target's
        (the dense engine: none, FP32, the reference a speed-up divides); any other target's own."""
        return replace(self.engine, int8_layers=tuple(int8_layers)) if self.engine.precision == "mixed" \
            else self.engine

    def describe(self) -> str:
        e, shape = self.engine, "x".join(map(str, self.input_shape))
        return f"{self.name} ({e.backend} {e.precision}, {shape}, {e.options.threads} thread(s))"


def check_targets(targets: Sequence[DeployTarget]) -> None:
    """One set of weights serves every target: at least one, names unique and usable as folder names, and every
    input shape the same but for its batch."""
    if not targets:
        raise UsageError("no deployment target", "give --sla-ms or --speedup, or --target ...")
    names = [t.name for t in targets]
    for name in names:
        if not _NAME.match(name):
            raise UsageError(f"target name {name!r} is not a plain name",
                             "use letters, digits, '-', '_' or '.', e.g. name=edge")
    if len(set(names)) != len(names):
        raise UsageError(f"two targets are both named {sorted(n for n in names if names.count(n) > 1)[0]!r}",
                         "give each --target its own name=...")
    sample = {t.input_shape[1:] for t in targets}
    if len(sample) > 1:
        raise UsageError(f"the targets' input shapes differ beyond the batch: {sorted(sample)}",
                         "one model serves every target: only the batch (the first dimension) may differ")


@dataclass(frozen=True)
class RunConfig:
    """Everything ``itcp-deploy run`` takes. ``targets``: where the engine runs and its SLA, one or more (each
    SLA's margin: the closed loop aims at ``(1 - margin) * SLA``); ``criterion``: the group score;
    ``importance``: which channels pruning keeps; ``method``: ``itcp``, a baseline search or a peer pruner;
    ``score_samples``: images the scores use."""

    model: str
    data: str
    out_dir: str
    targets: tuple[DeployTarget, ...]
    weights: str | None = None
    num_classes: int | None = None
    trust_code: bool = False
    ignore_layers: tuple[str, ...] = ()  # globs of layers whose output width is kept (pruning.build_space)
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
    # a mixed-precision plan whose final engine agrees with its FP32 model on fewer evaluation images is solved
    # again with the groups that disagree most held at FP32 (pipeline/driver.py). Off by default: at the same
    # latency FP32 groups cost width: on ResNet-20/56 at 4x one-shot, 0.95 was reached on all three engines after
    # up to three re-solves at a cost of 7.3-22.4 points of top-1; after one epoch it never re-solved
    # (docs/benchmarks.md section 27)
    min_agreement: float = 0.0

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The shape the shared stages trace, score and count MACs at: the first target's."""
        return self.targets[0].input_shape

    def validate(self) -> None:
        """Checks that need more than one field (each target checks its SLA when it is built)."""
        check_targets(self.targets)
        for t in self.targets:
            check_engine(t.engine.backend, t.engine.precision)  # names, before minutes of work
        mixed = [t.engine.precision == "mixed" for t in self.targets]
        if any(mixed) and (self.method != "itcp" or not all(mixed)):
            raise UsageError("--precision mixed chooses widths and precisions in ITCP's one solve, over one kind "
                             "of plan for every target", "use --method itcp and give every target mixed, or "
                             "use fp32/int8")
        if len(self.targets) > 1 and (self.profile.profile_path or self.profile.perf_model_path):
            raise UsageError("a profile or perf model to reuse fits one target's engine, not several",
                             "drop the profile or perf model path, or give one target")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise UsageError(f"--min-agreement must be in [0, 1], got {self.min_agreement}",
                             "pass e.g. --min-agreement 0.95 (0 turns the precision control off)")
        if self.min_agreement > 0 and not any(mixed):
            raise UsageError("--min-agreement acts on --precision mixed only (it holds a mixed plan's INT8 groups "
                             "at FP32)", "add --precision mixed, or gate an engine's agreement with "
                             "`itcp-deploy check-latency --min-agreement A --reference DENSE --data D`")
        if self.recipe.epochs < 0:
            raise UsageError(f"--epochs must be >= 0, got {self.recipe.epochs}", "pass e.g. --epochs 1")
        loop = self.loop
        if not 0 < loop.accept_low <= 1 or loop.max_rounds < 1 or min(loop.final_retries, loop.precision_retries) < 0:
            raise UsageError(f"accept_low must be in (0, 1], max_rounds >= 1, final_retries and precision_retries "
                             f">= 0, got {loop.accept_low}, {loop.max_rounds}, {loop.final_retries} and "
                             f"{loop.precision_retries}", "use the defaults (0.9, 4, 1, 3)")
        check_search(self.method, self.criterion, self.importance)
