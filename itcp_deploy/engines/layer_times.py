"""Per-run node times from an engine's profiler, reduced to one number per node (shared by the backends)."""

from __future__ import annotations

import numpy as np


def trimmed_mean(values: np.ndarray) -> float:
    """Mean after dropping the values below the 10th and above the 90th percentile.

    Profilers report whole microseconds, so per-layer times are means over many runs (sub-microsecond
    resolution); the trimming keeps a run preempted by another process on a shared machine from inflating
    one layer.
    """
    lo, hi = np.percentile(values, [10, 90])
    kept = values[(values >= lo) & (values <= hi)]
    return float(kept.mean() if kept.size else values.mean())


def quiet_runs_mean(per_run: list[dict[str, float]]) -> dict[str, float]:
    """Per-node mean over the runs whose total is at most the median total (the quieter half)."""
    if not per_run:
        return {}
    totals = np.array([sum(run.values()) for run in per_run])
    kept = [run for run, total in zip(per_run, totals, strict=True) if total <= np.median(totals)]
    names = {name for run in kept for name in run}
    return {name: float(np.mean([run.get(name, 0.0) for run in kept])) for name in names}
