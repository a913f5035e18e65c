"""Parsing of user-given shapes, numbers and targets (``--input-shape 1x3x32x32``, ``--sla-ms``, ``--speedup``)."""

from __future__ import annotations

import math
import os
import re

from itcp_deploy.errors import UsageError
from itcp_deploy.target import LatencyTarget

_SHAPE = re.compile(r"^\d+(x\d+){3}$")
_MEMORY_SHARE = 64  # a CNN's activations are tens of times its input


def max_input_values() -> int:
    """The most float32 input values one --input-shape may hold: 1/64 of physical memory (4 GiB if unknown)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        memory = 256 * 2**30
    return max(memory // _MEMORY_SHARE // 4, 1)


def parse_input_shape(text: str) -> tuple[int, int, int, int]:
    """``"1x3x32x32"`` -> ``(1, 3, 32, 32)`` (N, C, H, W), every dimension positive."""
    cleaned = text.strip().lower().replace(",", "x").replace("*", "x")
    if not _SHAPE.match(cleaned):
        raise UsageError(f"malformed --input-shape {text!r}", "write it as NxCxHxW, e.g. 1x3x32x32")
    dims = tuple(int(d) for d in cleaned.split("x"))
    if any(d <= 0 for d in dims):
        raise UsageError(f"--input-shape {text!r} has a zero dimension", "every dimension must be >= 1")
    values, limit = math.prod(dims), max_input_values()
    if values > limit:
        raise UsageError(f"--input-shape {text} is {values:,} values ({values * 4 / 2**30:.1f} GiB as float32); at "
                         f"most {limit:,} fit here ({limit * 4 / 2**30:.1f} GiB, 1/{_MEMORY_SHARE} of this machine's "
                         "memory, leaving room for the activations)", "use a smaller shape, e.g. 1x3x224x224")
    return dims  # type: ignore[return-value]


def number(value: float | str, option: str) -> float:
    """A number given to ``option`` (its range is the caller's to check)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{option} must be a number, got {value!r}", f"pass e.g. {option} 2.0") from None


def positive_float(value: float | str, option: str) -> float:
    """A finite number > 0, e.g. ``--sla-ms`` or ``--speedup``."""
    parsed = number(value, option)
    if not math.isfinite(parsed) or parsed <= 0:
        raise UsageError(f"{option} must be a finite number > 0, got {value!r}", f"pass e.g. {option} 2.0")
    return parsed


def parse_target(sla_ms: float | str | None, speedup: float | str | None, percentile: int = 50,
                 margin: float | str | None = None) -> LatencyTarget:
    """The one :class:`LatencyTarget` of a command, from its ``--sla-ms`` / ``--speedup`` / ``--percentile`` /
    ``--margin`` (None: the target's default)."""
    extra = {} if margin is None else {"margin": number(margin, "--margin")}
    return LatencyTarget(sla_ms=None if sla_ms is None else positive_float(sla_ms, "--sla-ms"),
                         speedup=None if speedup is None else positive_float(speedup, "--speedup"),
                         percentile=percentile, **extra)
