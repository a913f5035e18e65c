"""Device identity for cache keys, and what the CPU's instruction set means for the kernels.

A profile measured on one device is never reused on another, so the identity names what changes the kernels,
not only the model string (virtual machines call very different CPUs "AMD EPYC"): the kernel-relevant ISA
flags and the logical CPU count. ONNX Runtime's CPU library (MLAS) picks its kernels from the same flags:

- the NCHWc channel block of float convolutions is 16 with AVX-512F and 8 with AVX/AVX2 (MLAS
  ``platform.cpp``: ``NchwcBlockSize``), which is where the latency staircase steps;
- u8s8 integer GEMMs use VPMADDUBSW, whose int16 pair sums saturate, unless VNNI (AVX-512 VNNI on AVX-512
  core, AVX-VNNI) or AMX-INT8 is there (``MlasPlatformU8S8Overflow``); see :mod:`itcp_deploy.engines.int8`.

Everything below is a pure function of a :class:`CpuIsa`, so a test can pass any fake flag set; only
:func:`detect_isa` reads the machine (``/proc/cpuinfo``; elsewhere the flags are empty and said to be unknown).

Example::

    cpu_identity("AMD EPYC", CpuIsa("x86_64", frozenset({"avx2"})), 2)
    # -> 'AMD EPYC [x86_64; avx2; 2 logical CPUs]'
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: /proc/cpuinfo flags that change which kernels run (x86, then Arm), in the order they are shown.
KERNEL_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8",
    "asimd", "asimddp", "i8mm", "sve",
)
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
#: channel blocks a staircase is tested for (MLAS uses 8 and 16; 4 and 32 are there to be rejected).
BLOCK_CANDIDATES = (4, 8, 16, 32)


@dataclass(frozen=True)
class CpuIsa:
    """The architecture (``platform.machine()``) and the kernel-relevant flags (a subset of KERNEL_FLAGS)."""

    arch: str
    flags: frozenset[str]

    @property
    def x86(self) -> bool:
        return self.arch.lower() in _X86

    @property
    def vnni(self) -> bool:
        """Whether MLAS has a non-saturating u8s8 kernel here (VNNI or AMX-INT8)."""
        f = self.flags
        return "avx_vnni" in f or {"avx512_vnni", "avx512bw"} <= f or {"amx_tile", "amx_int8"} <= f

    @property
    def u8s8_saturates(self) -> bool:
        """x86 without VNNI/AMX (also x86 with unknown flags: assume the worst); never on Arm."""
        return self.x86 and not self.vnni

    def label(self) -> str:
        """The flags in KERNEL_FLAGS order, e.g. ``avx2 fma avx512f``; ``isa unknown`` without any."""
        return " ".join(f for f in KERNEL_FLAGS if f in self.flags) or "isa unknown"


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The kernel-relevant flags of the first ``flags`` (x86) or ``Features`` (Arm) line of ``/proc/cpuinfo``."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split()) & frozenset(KERNEL_FLAGS)
    return frozenset()


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux
        return ""


@functools.cache
def detect_isa() -> CpuIsa:
    """This machine's :class:`CpuIsa` (empty flags where ``/proc/cpuinfo`` is unreadable)."""
    return CpuIsa(platform.machine() or "unknown", parse_cpu_flags(_cpuinfo()))


def logical_cpus() -> int:
    return os.cpu_count() or 1


@functools.cache
def cpu_model() -> str:
    """The CPU model string (``/proc/cpuinfo`` "model name" on Linux)."""
    for line in _cpuinfo().splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown cpu"


def cpu_identity(model: str, isa: CpuIsa, cpus: int) -> str:
    """The CPU part of every cache key: model, architecture, kernel-relevant flags, logical CPU count."""
    return f"{model} [{isa.arch}; {isa.label()}; {cpus} logical CPUs]"


def device_name(kind: str = "cpu") -> str:
    """``"cpu"`` -> :func:`cpu_identity` of this machine; ``"cuda"`` -> GPU name and compute capability."""
    if kind == "cpu":
        return cpu_identity(cpu_model(), detect_isa(), logical_cpus())
    import torch

    if not torch.cuda.is_available():
        return "cuda (unavailable)"
    major, minor = torch.cuda.get_device_capability(0)
    return f"{torch.cuda.get_device_name(0)} sm_{major}{minor}"


def isa_channel_block(isa: CpuIsa) -> int:
    """ONNX Runtime's NCHWc channel block for ``isa``: 16 with AVX-512F, 8 on other x86 (MLAS's default).

    Elsewhere MLAS has no NCHWc block; 4, the finest step of the default candidate grid, loses nothing there.
    """
    if not isa.x86:
        return 4
    return 16 if "avx512f" in isa.flags else 8


def block_from_staircase(widths: Sequence[int], latencies: Sequence[float]) -> int | None:
    """The channel block a measured staircase (latency of one conv at output widths 1..N) steps by.

    For each candidate block ``B`` a smooth curve plus steps, ``a + b*L + c*L**2 + d*w`` with
    ``L = ceil(w / B)``, is fitted by least squares: every candidate has the same four parameters, so the
    smallest residual wins without a complexity penalty; the linear term absorbs the slow rise inside a block
    and the quadratic one steps that grow with width. The winner counts only if it halves the residual of the
    same model without steps (``B = 1``) and that residual is not nil; otherwise the curve has no clear
    staircase and None is returned.
    Blocks above half the widest width are not tried (at least two steps are needed).
    """
    w = np.asarray(widths, dtype=float)
    y = np.asarray(latencies, dtype=float)

    def rss(block: int) -> float:
        level = np.ceil(w / block)
        x = np.stack([np.ones_like(w), level, level**2, w], axis=-1)
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        return float(np.sum((y - x @ coef) ** 2))

    tried = {b: rss(b) for b in BLOCK_CANDIDATES if 2 * b <= w.max(initial=0)}
    if len(w) < 8 or not tried:
        return None
    best, smooth = min(tried, key=tried.__getitem__), rss(1)
    spread = float(np.sum((y - y.mean()) ** 2))
    return best if smooth > 1e-9 * spread and tried[best] < 0.5 * smooth else None


def channel_block(staircase: Sequence[tuple[int, float]] | None = None, isa: CpuIsa | None = None) -> int:
    """The channel block to round widths to: from a measured staircase ``[(width, latency), ...]`` when one
    is given and steps clearly, else from the ISA (:func:`isa_channel_block`; this machine's by default)."""
    if staircase:
        widths, latencies = zip(*staircase, strict=True)
        block = block_from_staircase(widths, latencies)
        if block is not None:
            return block
    return isa_channel_block(isa or detect_isa())
