"""Device identity for cache keys: a profile measured on one CPU or GPU model is never reused on another."""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.cache
def cpu_name() -> str:
    """The CPU model string (``/proc/cpuinfo`` "model name" on Linux), with the architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return f"{line.split(':', 1)[1].strip()} [{platform.machine()}]"
    return f"{platform.processor() or 'unknown cpu'} [{platform.machine()}]"


def device_name(kind: str = "cpu") -> str:
    """``"cpu"`` -> the CPU model; ``"cuda"`` -> the GPU name and compute capability of device 0."""
    if kind == "cpu":
        return cpu_name()
    import torch

    if not torch.cuda.is_available():
        return "cuda (unavailable)"
    major, minor = torch.cuda.get_device_capability(0)
    return f"{torch.cuda.get_device_name(0)} sm_{major}{minor}"
