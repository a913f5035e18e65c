"""Profiling: build engines at designed width plans and measure them (latency defined once in ``timing``).

Light on import (``perfmodel/`` imports ``profiling.records``); these load on first use:

- :func:`profile_engines`, :func:`run_profiling`, :class:`ProfileConfig` (``profiler``)
- :class:`TimingConfig`, :func:`measure`, :func:`measure_interleaved` (``timing``)
"""

from __future__ import annotations

from itcp_deploy.lazy import lazy_exports

_EXPORTS = {
    "profile_engines": "profiler",
    "run_profiling": "profiler",
    "ProfileConfig": "profiler",
    "TimingConfig": "timing",
    "measure": "timing",
    "measure_interleaved": "timing",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
