"""What one comparison table takes (:class:`CompareConfig`) and how a method name reads: its search method
and the levers its suffixes switch on (``+comp``: least-squares compensation, ``+rm``: block removal)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from itcp_deploy.digest import input_digests
from itcp_deploy.engines.build import EngineSpec
from itcp_deploy.errors import UsageError
from itcp_deploy.pipeline.config import FinetuneRecipe, ProfileSettings
from itcp_deploy.profiling.timing import TimingConfig

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
        from itcp_deploy.pipeline.strategies import PEER, STRATEGIES

        for m in self.methods:
            lever = levers(m)
            if STRATEGIES.get(lever.base) is PEER and (lever.compensate or lever.remove):
                raise UsageError(f"{m}: Torch-Pruning's own pruner takes neither compensation (it does not report "
                                 "the kept channels) nor block removal", f"use {lever.base}")
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
