"""A run's output folder: the one object that knows its file names, so stages hand each other files by
attribute (``folder.plan``) instead of by names two modules both spell.

Every stage writes its result into the folder and records itself in ``state.json``; a rerun resumes after
the last finished stage, and refuses a folder that holds a run with other settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from itcp_deploy.atomic_io import read_json, write_json
from itcp_deploy.errors import InputFileError, UsageError


class RunFolder:
    """The paths of one run's outputs (see ``README``), and small readers/writers of the shared ones."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.state = self.root / "state.json"
        self.space = self.root / "space.json"
        self.profile = self.root / "profile.json"
        self.perf_model = self.root / "perf_model.json"
        self.scores = self.root / "scores.json"
        self.sensitivity_cache = self.root / "sensitivity_cache.json"
        self.plan = self.root / "widths.json"
        self.pruned = self.root / "pruned.pt"
        self.finetune = self.root / "finetune"
        self.rounds = self.root / "rounds"

    def create(self) -> RunFolder:
        if self.root.exists() and not self.root.is_dir():
            raise InputFileError(f"output {self.root} is a file", "give a directory with -o")
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
        self.data: dict[str, Any] = {"config": self.fingerprint, "stages": {}}
        if self.path.exists():
            saved = read_json(self.path, "run state")
            if saved.get("config") != self.fingerprint:
                raise UsageError(f"{folder.root} holds a run with other settings",
                                 "use another -o directory, or delete it to start over")
            self.data = saved

    def done(self, stage: str) -> dict | None:
        return self.data["stages"].get(stage)

    def finish(self, stage: str, result: dict) -> dict:
        self.data["stages"][stage] = result
        write_json(self.path, self.data)
        return result
