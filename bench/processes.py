"""What the sweeps' child processes share, and which code a sweep ran."""

from __future__ import annotations

import ctypes
import signal
import subprocess
from pathlib import Path


def die_with_parent() -> None:
    """In a child, before exec (Linux): it is killed when the sweep that started it is. A sweep stopped with
    ``kill`` left its run going, and two such orphans held a two-core machine at load 5-6 while rows were being
    measured (docs/benchmarks.md section 20)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def code_commit(code: Path) -> str:
    """The commit of ``code``: its git HEAD (``+dirty`` with uncommitted changes), or the ``COMMIT`` file of an
    exported copy (``git archive``, so that commits made while a sweep runs do not change its code)."""
    if (code / "COMMIT").exists():
        return (code / "COMMIT").read_text().strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "itcp_deploy"], cwd=code, capture_output=True, text=True)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
