"""A pruning plan as data (``widths.json``): what the solver decided, separate from applying it.

The solver in ``search/`` returns a :class:`PruningPlan`; ``pruning/`` applies it. The file records the base
model, the criterion, the widths, the predicted and budget latency and the Pareto front of the solve, with a
schema version, so a plan replays on another machine without pickled code.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from itcp_deploy.atomic_io import read_json, write_json
from itcp_deploy.errors import InputFileError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PruningPlan:
    """Kept width per group, and how it was chosen.

    Example::

        PruningPlan(model="cifar_resnet20", input_shape=(1, 3, 32, 32), method="itcp", criterion="taylor",
                    widths={"conv1": 12, "layer1.0.conv1": 8, ...}, budget_ms=0.30, predicted_ms=0.297)
    """

    model: str
    input_shape: tuple[int, int, int, int]
    widths: dict[str, int]
    method: str = "itcp"
    criterion: str = "taylor"
    importance: str = "taylor"
    budget_ms: float | None = None
    predicted_ms: float | None = None
    score: float | None = None
    weights: str | None = None
    pareto: list[tuple[float, float]] = field(default_factory=list)  # (predicted latency ms, score)
    schema: int = SCHEMA_VERSION
    int8_groups: tuple[str, ...] = ()  # a mixed-precision plan's INT8 groups (issue 27); the rest FP32

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PruningPlan:
        d = read_json(path, "widths file")
        if not isinstance(d, dict) or d.get("schema") != SCHEMA_VERSION or "widths" not in d:
            raise InputFileError(f"{path} is not a widths.json of schema {SCHEMA_VERSION}",
                                 "regenerate it with `itcp-deploy search`")
        try:
            return cls(**{**d, "input_shape": tuple(d["input_shape"]),
                          "widths": {str(k): int(v) for k, v in d["widths"].items()},
                          "pareto": [tuple(p) for p in d.get("pareto", [])],
                          "int8_groups": tuple(str(g) for g in d.get("int8_groups", ()))})
        except (TypeError, ValueError) as err:
            raise InputFileError(f"{path} has malformed fields ({err})",
                                 "regenerate it with `itcp-deploy search`") from err
