"""Shared test fixtures. Tests run on CPU with one intra-op thread so they behave alike on 2-core CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED = Path(os.environ.get("ITCP_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _quiet_busy_note(monkeypatch):
    """The busy-machine warning depends on the CI machine's load, not on the code under test: each test starts
    as if it had just been given (tests/test_gate.py fakes the load and resets it to see it)."""
    import time

    from itcp_deploy.profiling import timing

    monkeypatch.setattr(timing, "_last_busy_note", time.monotonic())


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` beside the checkout; tests that need it are marked slow and skip without it."""
    if not SHARED.exists():
        pytest.skip(f"needs {SHARED} (CIFAR-10 copy and published weights); set ITCP_SHARED")
    return SHARED


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from itcp_deploy.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()
