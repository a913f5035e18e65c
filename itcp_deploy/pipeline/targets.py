"""A deployment target: one engine (backend, precision, threads), one input shape (batch included) and one
:class:`~itcp_deploy.target.LatencyTarget`. ``run`` with several of them finds one set of weights that meets
every SLA (``pipeline/vector_loop.py``); each target is profiled, fitted, built and measured on its own, under
``OUT/targets/<name>/``.

Example::

    DeployTarget("edge", EngineSpec("onnxruntime"), (1, 3, 32, 32), LatencyTarget(speedup=1.67))
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from itcp_deploy.engines.build import EngineSpec
from itcp_deploy.errors import UsageError
from itcp_deploy.target import LatencyTarget

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


@dataclass(frozen=True)
class DeployTarget:
    """Where one engine of the plan runs and the latency it must meet there."""

    name: str
    engine: EngineSpec
    input_shape: tuple[int, int, int, int]
    latency: LatencyTarget

    def describe(self) -> str:
        e, shape = self.engine, "x".join(map(str, self.input_shape))
        return f"{self.name} ({e.backend} {e.precision}, {shape}, {e.options.threads} thread(s))"


def target_dir(root: str | Path, target: DeployTarget) -> Path:
    """The folder of one target's files in a run folder (its dense and final engines, profile, perf model)."""
    return Path(root) / "targets" / target.name


def check_targets(targets: Sequence[DeployTarget]) -> None:
    """One set of weights serves every target: names unique and usable as folder names, and every input shape
    the same but for its batch."""
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
