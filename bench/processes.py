"""What the sweeps' child processes share."""

from __future__ import annotations

import ctypes
import signal


def die_with_parent() -> None:
    """In a child, before exec (Linux): it is killed when the sweep that started it is. A sweep stopped with
    ``kill`` left its run going, and two such orphans held a two-core machine at load 5-6 while rows were being
    measured (docs/benchmarks.md section 20)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
