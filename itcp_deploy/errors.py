"""User-facing errors.

A user mistake raises an :class:`ItcpError`; the CLI catches it once, prints one line (problem + fix) and
exits with :attr:`ItcpError.exit_code`. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ItcpError(Exception):
    """A problem the user can fix. ``str(err)`` is one line: what is wrong, then how to fix it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem.rstrip(".")
        self.fix = fix
        super().__init__(self.problem + (f". Fix: {fix}" if fix else ""))


class UsageError(ItcpError):
    """A malformed option or argument."""


class InputFileError(ItcpError):
    """A file or directory that is missing, unreadable, corrupt or of the wrong kind."""


class UnknownNameError(ItcpError):
    """A name that is not in a registry."""


class UntrustedCodeError(ItcpError):
    """Loading would execute code from a file and ``--trust-code`` was not given."""


class MissingDependencyError(ItcpError):
    """An optional package (TensorRT, onnxruntime-gpu, ...) or a device (CUDA) is not available."""


class InfeasibleError(ItcpError):
    """No width plan meets the latency budget."""


class CacheError(ItcpError):
    """A profiling cache that is corrupt or belongs to another device, backend version or precision."""


class FitRejectedError(ItcpError):
    """The performance model's held-out error is far above the measurement noise."""


class SlaMissedError(ItcpError):
    """A measured latency above the SLA (``check-latency`` exits 1 on it)."""

    exit_code = 1


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure: Python's ``MemoryError``, torch's CPU allocator
    (``RuntimeError: ... can't allocate memory``), or a C++ ``std::bad_alloc`` passed through onnx/onnxruntime."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return isinstance(err, MemoryError) or "bad_alloc" in first or "allocate" in first
