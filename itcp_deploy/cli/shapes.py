"""Parsing of user-given shapes, numbers and targets (``--input-shape 1x3x32x32``, ``--sla-ms``, ``--speedup``)."""

from __future__ import annotations

import math
import re

from itcp_deploy.errors import UsageError
from itcp_deploy.target import LatencyTarget

_SHAPE = re.compile(r"^\d+(x\d+){3}$")


def parse_input_shape(text: str) -> tuple[int, int, int, int]:
    """``"1x3x32x32"`` -> ``(1, 3, 32, 32)`` (N, C, H, W), every dimension positive."""
    cleaned = text.strip().lower().replace(",", "x").replace("*", "x")
    if not _SHAPE.match(cleaned):
        raise UsageError(f"malformed --input-shape {text!r}", "write it as NxCxHxW, e.g. 1x3x32x32")
    dims = tuple(int(d) for d in cleaned.split("x"))
    if any(d <= 0 for d in dims):
        raise UsageError(f"--input-shape {text!r} has a zero dimension", "every dimension must be >= 1")
    return dims  # type: ignore[return-value]


def positive_float(value: float | str, option: str) -> float:
    """A finite number > 0, e.g. ``--sla-ms`` or ``--speedup``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{option} must be a number, got {value!r}", f"pass e.g. {option} 2.0") from None
    if not math.isfinite(number) or number <= 0:
        raise UsageError(f"{option} must be a finite number > 0, got {value!r}", f"pass e.g. {option} 2.0")
    return number


def parse_target(sla_ms: float | str | None, speedup: float | str | None, percentile: int = 50) -> LatencyTarget:
    """The one :class:`LatencyTarget` of a command, from its ``--sla-ms`` / ``--speedup`` / ``--percentile``."""
    return LatencyTarget(sla_ms=None if sla_ms is None else positive_float(sla_ms, "--sla-ms"),
                         speedup=None if speedup is None else positive_float(speedup, "--speedup"),
                         percentile=percentile)
