"""How much profiling and timing a zoo-sweep model gets, from what one dense engine costs (``bench/zoo_sweep.py``).

A fixed effort (12 engines x 5 rounds x 20 runs, 100 profiled runs each) takes a second on a MobileNet at
64x64 and an hour on a ViT-H at 224: no per-model cap holds both. So each model first prunes a copy to middle
widths (Torch-Pruning's trace: seconds for a 200-layer DenseNet), exports and builds its dense ONNX Runtime
engine and times a few runs of it (the probe; its engine is kept for the final latency measurement). From the
probe's CPU-seconds to prune, export and build (``build_s``) and its median latency (``dense_ms``), the effort is
the first of ``LEVELS`` (most to least) whose estimated cost fits ``PROFILE_SHARE`` of the model's CPU cap;
the last level is the floor, taken even when over the share (the cap then decides, and says so).

Estimated profile cost of a level, in CPU-seconds: ``builds x (build_s + ENGINE_SHARE x dense_ms x runs)``,
with ``runs = warmup + rounds x runs_per_round`` (timing) ``+ warmup + 1.5 x layer_runs`` (per-layer
profiling costs about half a run more per node), and ``ENGINE_SHARE = 0.7`` because the design engines are
pruned (their mean latency is below the dense one's). The final dense-vs-pruned measurement and the taylor
gradients get ``FINAL_SHARE`` and ``SCORE_SHARE`` of the cap the same way, each with a floor.
"""

from __future__ import annotations

from dataclasses import dataclass

PROFILE_SHARE = 0.4
FINAL_SHARE = 0.1
SCORE_SHARE = 0.1
ENGINE_SHARE = 0.7
BACKWARD_COST = 3.0  # a forward + backward pass costs about three forwards


@dataclass(frozen=True)
class ProfileLevel:
    builds: int
    holdout: int
    warmup: int
    rounds: int
    runs_per_round: int
    layer_runs: int

    def runs(self) -> float:
        return self.warmup + self.rounds * self.runs_per_round + self.warmup + 1.5 * self.layer_runs


LEVELS = (
    ProfileLevel(12, 3, 5, 5, 20, 100),  # the sweep's original fixed effort
    ProfileLevel(12, 3, 3, 4, 10, 40),
    ProfileLevel(10, 3, 2, 3, 8, 20),
    ProfileLevel(8, 2, 2, 3, 5, 10),
    ProfileLevel(6, 2, 1, 3, 3, 5),  # the floor
)


@dataclass(frozen=True)
class Effort:
    """What :func:`choose_effort` settled on, and why (estimates in CPU-seconds)."""

    profile: ProfileLevel
    level: int
    profile_estimate_s: float
    final_rounds: int
    final_runs: int
    score_batch: int
    score_batches: int


def profile_cost_s(level: ProfileLevel, dense_ms: float, build_s: float) -> float:
    return level.builds * (build_s + ENGINE_SHARE * dense_ms / 1000.0 * level.runs())


def choose_effort(dense_ms: float, build_s: float, cap_s: float) -> Effort:
    """The most effort that fits the model's cap (see the module docstring); never below the floors."""
    index = next((i for i, level in enumerate(LEVELS) if profile_cost_s(level, dense_ms, build_s)
                  <= PROFILE_SHARE * cap_s), len(LEVELS) - 1)
    level = LEVELS[index]
    run_s = dense_ms / 1000.0
    # final: dense and pruned engines, (2 warm-up + rounds x runs) each; 6 x 15 at most, 3 x 3 at least
    final_runs = int(max(3, min(15, (FINAL_SHARE * cap_s / (2 * run_s) - 2) / 6)))
    final_rounds = 6 if final_runs > 3 else 3
    # taylor gradients: up to 2 batches of 16 images, down to 1 batch of 2
    images = int(max(2, min(32, SCORE_SHARE * cap_s / (BACKWARD_COST * run_s))))
    batch = min(16, images)
    return Effort(level, index, round(profile_cost_s(level, dense_ms, build_s), 1), final_rounds, final_runs,
                  batch, max(1, min(2, images // batch)))
