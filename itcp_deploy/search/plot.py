"""Draw predicted Pareto fronts to a PNG (matplotlib, Agg backend, imported only when plotting)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from itcp_deploy.atomic_io import atomic_path


def plot_fronts(
    fronts: Mapping[str, list[tuple[float, float]]],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    dense_ms: float | None = None,
) -> None:
    """One step line per method: best score (y) reachable at each predicted latency (x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, front in fronts.items():
        if front:
            xs, ys = zip(*front, strict=True)
            ax.step(
                xs,
                ys,
                where="post",
                marker="." if name != "itcp" else None,
                label=name,
                linewidth=2.2 if name == "itcp" else 1.2,
            )
    if dense_ms is not None:
        ax.axvline(dense_ms, color="grey", linestyle=":", label="dense")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("score (sum over groups)")
    ax.set_title(title or "predicted Pareto fronts")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
