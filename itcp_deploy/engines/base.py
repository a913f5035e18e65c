"""The backend interface: building (slow, cached, writes files) is kept apart from running (load, feed, run).

A :class:`~itcp_deploy.engines.backend.Backend` names its builder (``SessionFromOnnx``, ``EngineFromOnnx``,
``ProgramFromTorch``) and its :class:`Runner`. A runner is a context manager over a built artifact, or over a
zero-argument callable that builds one, resolved on enter (Polygraphy's lazy loaders). Runners never time
themselves: latency is defined once, in :mod:`itcp_deploy.profiling.timing`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from itcp_deploy.errors import InputFileError, UsageError

Artifact = str | os.PathLike[str] | Callable[[], str | os.PathLike[str]]


@dataclass(frozen=True)
class EngineOptions:
    """How an engine is built and run. Defaults to one CPU thread, the backend's default device.

    ``device``: ``"cpu"`` or ``"cuda"`` (torch, onnxruntime with onnxruntime-gpu); ``provider`` picks an
    onnxruntime execution provider (``cpu``, ``cuda``, ``tensorrt``). ``workspace_mb`` and ``opt_level`` are
    TensorRT builder settings; ``cuda_graphs`` replays the inference as a CUDA graph on GPU backends.
    ``perf_hint`` is OpenVINO's performance hint (``latency`` or ``throughput``).
    """

    threads: int = 1
    device: str = "cpu"
    provider: str = "cpu"
    workspace_mb: int = 1024
    opt_level: int = 3
    cuda_graphs: bool = True
    timing_cache: str | None = None
    perf_hint: str = "latency"


class Runner(ABC):
    """Loads one built engine and runs it. Subclasses implement ``_activate``, ``_deactivate``, ``_infer``,
    ``_prepare`` and ``input_specs``; the public methods check state and inputs, then call them."""

    #: which clock :mod:`itcp_deploy.profiling.timing` must use: ``cpu`` (perf_counter) or ``cuda`` (events).
    clock = "cpu"

    def __init__(self, artifact: Artifact, options: EngineOptions | None = None) -> None:
        self._artifact = artifact
        self.options = options or EngineOptions()
        self.active = False
        self.path: Path | None = None

    def __enter__(self) -> Runner:
        self.path = self._resolve()
        self._activate(self.path)
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False
        self._deactivate()

    def _resolve(self) -> Path:
        """The artifact path: ``artifact`` itself, or what the zero-argument builder returns."""
        return Path(self._artifact() if callable(self._artifact) else self._artifact)

    @abstractmethod
    def input_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Input name -> (shape, numpy dtype)."""

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on host arrays; returns output name -> host array."""
        return self._infer(self._check(feeds))

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """Bind inputs once (device copies, output buffers, CUDA graph capture) and return ``run_once()``,
        the call the timer repeats. ``run_once`` may return before the GPU is done."""
        return self._prepare(self._check(feeds))

    def synchronize(self) -> None:  # noqa: B027  (deliberately a no-op on CPU)
        """Wait for queued device work (no-op on CPU)."""

    def layer_times_ms(self, feeds: Mapping[str, np.ndarray], runs: int, warmup: int) -> dict[str, float] | None:
        """Mean per-run time of each backend layer (backend names) over ``runs`` runs, or ``None`` where the
        backend has no in-context per-layer profile."""
        self._check(feeds)
        return None

    def random_feeds(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded inputs matching :meth:`input_specs` (:func:`~itcp_deploy.sample_inputs.sample_inputs`)."""
        from itcp_deploy.sample_inputs import sample_inputs

        rng = np.random.default_rng(seed)
        return {name: sample_inputs(shape, rng, dtype) for name, (shape, dtype) in self.input_specs().items()}

    def _check(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.active:
            raise RuntimeError(f"{type(self).__name__} is not active: use it as a context manager")
        specs = self.input_specs()
        if set(feeds) != set(specs):
            raise UsageError(
                f"inputs {sorted(feeds)} do not match the engine's inputs {sorted(specs)}",
                "feed exactly the engine's input names",
            )
        out = {}
        for name, (shape, dtype) in specs.items():
            arr = np.ascontiguousarray(feeds[name])
            clash = len(arr.shape) != len(shape) or any(  # a dynamic dimension ('batch', None) takes any size
                isinstance(d, int) and d >= 0 and d != a for d, a in zip(shape, arr.shape, strict=True))
            if clash or arr.dtype != dtype:
                raise UsageError(
                    f"input {name!r} is {arr.dtype}{list(arr.shape)}, the engine wants {np.dtype(dtype)}{list(shape)}",
                    "check --input-shape and the precision",
                )
            out[name] = arr
        return out

    @abstractmethod
    def _activate(self, path: Path | None) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _prepare(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]: ...


class OnnxBuilder(ABC):
    """Builds one backend's artifact directory from an ONNX file; call it to build. The public call checks the
    input, then calls the backend's ``_build`` hook, so every ONNX backend refuses a missing file alike."""

    def __init__(self, onnx_path: str | os.PathLike[str], artifact_dir: Path, options: EngineOptions) -> None:
        self.onnx_path = Path(onnx_path)
        self.artifact_dir = Path(artifact_dir)
        self.options = options

    def __call__(self) -> Path:
        if not self.onnx_path.is_file():
            raise InputFileError(f"ONNX file {self.onnx_path} does not exist", "check the path")
        self._build()
        return self.artifact_dir

    @abstractmethod
    def _build(self) -> None:
        """Write the artifact files under ``artifact_dir`` (atomically)."""
