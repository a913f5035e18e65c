"""Profiling: build engines at designed width plans and measure them (latency defined once in ``timing``).

Light on import (``perfmodel/`` imports ``profiling.records``); these load on first use:

- :func:`profile_engines`, :func:`run_profiling`, :class:`ProfileConfig` (``profiler``)
- :class:`TimingConfig`, :func:`measure`, :func:`measure_interleaved` (``timing``)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "profile_engines": "profiler",
    "run_profiling": "profiler",
    "ProfileConfig": "profiler",
    "TimingConfig": "timing",
    "measure": "timing",
    "measure_interleaved": "timing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
