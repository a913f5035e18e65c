"""Profile records as plain data: what ``profile-engines`` writes and ``fit`` reads.

No torch or backend imports: ``perfmodel/`` reads these.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from itcp_deploy.atomic_io import read_json, write_json
from itcp_deploy.errors import InputFileError, UsageError
from itcp_deploy.finite import check_number, check_numbers
from itcp_deploy.space import PruningSpace

PROFILE_SCHEMA = 2
#: ``layer_ms["<layer>+"]``: the ops after a layer that read its output (pools, concatenations, shuffles), timed
#: apart from the layer itself (issue 24)
ATTACHED_SUFFIX = "+"
#: INT8 settings every schema-1 profile was taken with (before they followed the ISA), by backend.
_SCHEMA1_INT8 = {"tensorrt": "s8s8-symmetric"}


@dataclass(frozen=True)
class LatencyStats:
    """Summary of repeated timed runs of one engine, in milliseconds."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    mean_ms: float
    std_ms: float
    n: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=float)
        if a.size == 0:
            raise ValueError("no timing samples")
        return cls(median_ms=float(np.median(a)), p90_ms=float(np.percentile(a, 90)),
                   p99_ms=float(np.percentile(a, 99)), min_ms=float(a.min()), mean_ms=float(a.mean()),
                   std_ms=float(a.std()), n=int(a.size))

    def slowdown(self) -> float:
        """The median over the fastest run. With more busy processes than cores a run is preempted with a
        chance that grows with its length: on two cores at a load of 3, MNASNet 1.0's dense engine at 224
        measured 7.0 ms at its median and 3.0 ms at its p10 while the plan beside it was slowed far less, which
        put a probe's plan at 0.48 of its prediction (``profiler.measure_plans`` measures such a session again)."""
        return self.median_ms / self.min_ms if self.min_ms > 0 else float("inf")

    def scaled(self, factor: float) -> LatencyStats:
        """Every time times ``factor`` (a session's latencies put on another session's scale)."""
        return LatencyStats(self.median_ms * factor, self.p90_ms * factor, self.p99_ms * factor,
                            self.min_ms * factor, self.mean_ms * factor, self.std_ms * factor, self.n)

    def percentile_ms(self, percentile: int) -> float:
        return {50: self.median_ms, 90: self.p90_ms, 99: self.p99_ms}[percentile]


@dataclass(frozen=True)
class EngineMeasurement:
    """One built whole-network engine at one width plan, measured.

    ``role``: ``design`` (used to fit the model), ``holdout`` (random plans, only for validating it) or
    ``dense``. ``layer_ms``: per-layer time of each Conv/Linear layer (by module name; ``name+``: the ops
    attached to its output, :data:`ATTACHED_SUFFIX`) in this engine,
    in context (ORT session profiling, TensorRT IProfiler) or from isolated-layer engines, per
    ``layer_source``. ``round_medians_ms``: the median of each interleaved measurement round, whose spread is
    the noise floor. ``int8_groups``: the groups quantized in a mixed-precision engine (``--precision mixed``,
    :mod:`itcp_deploy.engines.mixed`), sorted; empty for an engine at one precision.
    """

    engine_id: str
    widths: dict[str, int]
    role: str
    latency: LatencyStats
    layer_ms: dict[str, float] = field(default_factory=dict)
    other_ms: float = 0.0
    round_medians_ms: list[float] = field(default_factory=list)
    int8_groups: tuple[str, ...] = ()

    def scaled(self, factor: float) -> EngineMeasurement:
        """This engine with every time (latency, layers, rounds) times ``factor``."""
        return replace(self, latency=self.latency.scaled(factor),
                       layer_ms={k: v * factor for k, v in self.layer_ms.items()}, other_ms=self.other_ms * factor,
                       round_medians_ms=[m * factor for m in self.round_medians_ms])


@dataclass
class Profile:
    """Everything measured for one model on one backend/device/precision/input shape.

    ``device``: model, ISA flags and logical CPUs (:func:`itcp_deploy.engines.device.device_name`);
    ``quantization``: the INT8 settings' label (empty unless int8). :meth:`identity` is what must match
    before a profile is reused.
    """

    model: str
    input_shape: tuple[int, int, int, int]
    backend: str
    backend_version: str
    precision: str
    device: str
    space: PruningSpace
    engines: list[EngineMeasurement]
    layer_source: str = "in-context"  # or "isolated"
    builds: int = 0
    wall_s: float = 0.0
    noise_pct: float = float("nan")  # how much re-measuring an engine moves its median, percent
    quantization: str = ""
    schema: int = PROFILE_SCHEMA

    def identity(self) -> dict[str, str]:
        """What makes two profiles' latencies comparable: backend and version, device, precision, INT8 settings."""
        return {"backend": self.backend, "backend_version": self.backend_version, "device": self.device,
                "precision": self.precision, "quantization": self.quantization}

    def check_identity(self, expected: Mapping[str, str], path: str | os.PathLike[str]) -> None:
        """Refuse to reuse this profile for a run that needs ``expected`` (see :func:`check_identity`)."""
        check_identity(self.identity(), expected, f"profile {path}")

    def by_role(self, role: str) -> list[EngineMeasurement]:
        return [e for e in self.engines if e.role == role]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["space"] = self.space.to_dict()
        return d

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        d = read_json(path, "profile")
        if isinstance(d, dict) and d.get("schema") == 1:  # the same fields, INT8 settings implied by the backend
            int8 = _SCHEMA1_INT8.get(str(d.get("backend")), "u8s8") if d.get("precision") == "int8" else ""
            d = {**d, "schema": PROFILE_SCHEMA, "quantization": int8}
        if not isinstance(d, dict) or d.get("schema") != PROFILE_SCHEMA:
            raise InputFileError(f"{path} is not a profile of schema {PROFILE_SCHEMA}",
                                 "regenerate it with `itcp-deploy profile-engines`")
        try:
            engines = [EngineMeasurement(**{**e, "latency": LatencyStats(**e["latency"]),
                                            "layer_ms": _floats(e.get("layer_ms", {})),
                                            "round_medians_ms": [float(x) for x in e.get("round_medians_ms", [])],
                                            "int8_groups": tuple(e.get("int8_groups", ()))})
                       for e in d["engines"]]
            profile = cls(**{**d, "input_shape": tuple(d["input_shape"]), "engines": engines,
                             "space": PruningSpace.from_dict(d["space"])})
            _check_numbers(profile, path)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InputFileError(f"profile {path} has malformed fields ({err.__class__.__name__}: {err})",
                                 "regenerate it with `itcp-deploy profile-engines`") from err
        return profile


def _floats(layer_ms: dict) -> dict[str, float]:
    """Layer times as floats (a JSON integer beyond 2**63 would break numpy later); non-numbers fail here."""
    return {k: float(v) for k, v in layer_ms.items()}


def _check_numbers(profile: Profile, path: str | os.PathLike[str]) -> None:
    """Every latency finite and > 0 (layer times >= 0): a NaN would pass the fit's quality gate unseen; every
    width plan one of the space's."""
    where, fix = f"profile {path}", "re-measure it with `itcp-deploy profile-engines`"
    check_number(profile.noise_pct, where, "noise_pct", fix, allow_nan=True)
    for i, e in enumerate(profile.engines):
        field = f"engines[{i}]"
        if not (isinstance(e.widths, dict) and isinstance(e.layer_ms, dict) and isinstance(e.role, str)
                and all(isinstance(k, str) for k in e.layer_ms) and type(e.latency.n) is int):
            raise InputFileError(f"{where}: {field} has malformed fields", fix)
        prunable = {g.name for g in profile.space.prunable}
        if not all(isinstance(g, str) and g in prunable for g in e.int8_groups):
            raise InputFileError(f"{where}: {field}.int8_groups holds a name that is not a prunable group", fix)
        if not all(type(w) is int for w in e.widths.values()):
            raise InputFileError(f"{where}: {field}.widths holds a width that is not an integer", fix)
        try:
            profile.space.complete(e.widths)
        except UsageError as err:
            raise InputFileError(f"{where}: {field}.widths: {err.problem}", fix) from None
        check_number(e.latency.median_ms, where, f"{field}.latency.median_ms", fix, minimum=1e-12)
        stats = {k: v for k, v in asdict(e.latency).items() if k != "median_ms"}
        for name, value in stats.items():
            check_number(value, where, f"{field}.latency.{name}", fix)
        check_numbers(list(e.layer_ms.values()), where, f"{field}.layer_ms", fix)
        check_number(e.other_ms, where, f"{field}.other_ms", fix, minimum=None)
        check_numbers(e.round_medians_ms, where, f"{field}.round_medians_ms", fix)


def check_identity(found: Mapping[str, str], expected: Mapping[str, str], what: str) -> None:
    """Refuse to reuse a profile (or a perf model fitted on one, whose ``meta`` holds the same fields) taken on
    another device or with other settings. ``expected``: :func:`itcp_deploy.profiling.profiler.profile_identity`.

    Raises:
        InputFileError: a field differs; the message names it, both values and the fix.
    """
    for name, value in expected.items():
        if found.get(name) != value:
            raise InputFileError(
                f"{what} was taken with {name} {found.get(name)!r}, this run needs {value!r}",
                "move it away so that it is measured again here, or pass one taken with these settings",
            )
