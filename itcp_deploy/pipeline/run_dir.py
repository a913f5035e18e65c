"""A run's output folder: the one object that knows its file names, so stages hand each other files by
attribute (``folder.plan``) instead of by names two modules both spell.

Every stage writes its result into the folder and records itself in ``state.json``; a rerun resumes after
the last finished stage, and refuses a folder that holds a run with other settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from itcp_deploy.atomic_io import read_json, write_json
from itcp_deploy.digest import changed_inputs, input_digests
from itcp_deploy.errors import UsageError
from itcp_deploy.paths import check_output_dir


@dataclass(frozen=True)
class TargetFiles:
    """One target's files: its dense and final engines (built into ``root`` under the names ``DENSE`` and
    ``FINAL``), profile, perf model, the closed loop's round engines and the perf model's held-out plot."""

    root: Path
    DENSE = "dense"
    FINAL = "model"

    def round_engine(self, kind: str, r: int) -> tuple[Path, str]:
        """Where the engine of the loop's ``r``-th plan of ``kind`` (``round``, ``peer``) is built, and its name."""
        return self.rounds, f"{kind}{r}"

    @property
    def profile(self) -> Path:
        return self.root / "profile.json"

    @property
    def perf_model(self) -> Path:
        return self.root / "perf_model.json"

    @property
    def rounds(self) -> Path:
        return self.root / "rounds"

    @property
    def holdout_plot(self) -> Path:
        return self.root / "latency_pred_vs_measured.png"


class RunFolder:
    """The paths of one run's outputs (see ``README``), and small readers/writers of the shared ones. Each
    target's files (:meth:`target`) are in the run folder itself when the run has one target, else in
    ``targets/<name>/``."""

    def __init__(self, root: str | Path, targets: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.several = len(targets) > 1
        self.state = self.root / "state.json"
        self.space = self.root / "space.json"
        self.scores = self.root / "scores.json"
        self.importance = self.root / "importance.json"  # per-channel taylor importance, when the scores had it
        self.int8_cost = self.root / "int8_cost.json"  # a mixed-precision run's: each group's INT8 cost
        self.sensitivity_cache = self.root / "sensitivity_cache.json"
        self.plan = self.root / "widths.json"
        self.pruned = self.root / "pruned.pt"
        self.peer_model = self.root / "peer_pruned.pt"  # a peer pruner's own pruned model (its channel choice)
        self.shipped_model = self.root / "loop_pruned.pt"  # the loop's one-shot model of its plan, when it made one
        self.finetune = self.root / "finetune"
        self.pareto_plot = self.root / "pareto.png"
        self.widths_plot = self.root / "widths.png"
        self.report_json = self.root / "report.json"
        self.report_md = self.root / "report.md"
        self.calibration = self.root / "calibration.npz"  # int8 without --calib: drawn from the run's data

    def target(self, name: str) -> TargetFiles:
        return TargetFiles(self.root / "targets" / name if self.several else self.root)

    def create(self) -> RunFolder:
        check_output_dir("-o", self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def write_arrays(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        write_json(path, {k: [float(x) for x in v] for k, v in arrays.items()})

    def read_arrays(self, path: Path) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=float) for k, v in read_json(path, path.stem).items()}


class RunState:
    """``state.json``: the run's settings fingerprint, finished stages and their small results; written
    atomically after each stage."""

    def __init__(self, folder: RunFolder, config: Any, volatile: tuple[str, ...] = ("quiet", "out_dir")) -> None:
        self.path = folder.state
        settings = json.loads(json.dumps(asdict(config), default=str))
        settings.get("recipe", {}).pop("train_time_s", None)  # a time limit does not change the result's kind
        self.fingerprint = {k: v for k, v in settings.items() if k not in volatile}
        # the same path may hold other bytes on resume: fingerprint the contents of every input file too
        calibs = {t.engine.calib for t in config.targets if t.engine.calib}
        self.fingerprint["contents"] = input_digests({
            "model": config.model, "weights": config.weights, "data": config.data.partition(":")[2] or config.data,
            **{f"calibration set {c}": c if c.endswith(".npz") else f"calib/{c}.npz" for c in sorted(calibs)}})
        self.data: dict[str, Any] = {"config": self.fingerprint, "stages": {}}
        if self.path.exists():
            saved = read_json(self.path, "run state")
            if not isinstance(saved, dict) or saved.get("config") != self.fingerprint:
                raise UsageError(f"{folder.root} holds a run with other settings"
                                 f"{changed_inputs(saved, self.fingerprint['contents'])}",
                                 "use another -o directory, or delete it to start over")
            self.data = saved

    def done(self, stage: str) -> dict | None:
        return self.data["stages"].get(stage)

    def finish(self, stage: str, result: dict) -> dict:
        self.data["stages"][stage] = result
        write_json(self.path, self.data)
        return result

    @property
    def retries(self) -> list[dict]:
        """The final stage's re-solves so far, oldest first (each: why, and every target's aim factor)."""
        return list(self.data.get("retries", []))

    def retry(self, stages: Sequence[str], record: dict) -> None:
        """Forget ``stages`` (they run again) and keep ``record`` of why; written at once, so a resumed run
        continues the re-solve instead of reporting the miss."""
        for stage in stages:
            self.data["stages"].pop(stage, None)
        self.data["retries"] = [*self.retries, record]
        write_json(self.path, self.data)
