"""What a backend is: its builder (``XFromY``), its runner, its version and device (for cache keys)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from itcp_deploy.engines.base import Artifact, EngineOptions, Runner

ATTACHED = "+"  # marks a node charged to the layer whose output it reads (see Backend.layer_nodes)


class Backend(ABC):
    """One engine backend: how to build an artifact and which runner loads it.

    ``source`` is ``"onnx"`` (built from an ONNX file) or ``"torch"`` (built from an ``nn.Module``).
    ``in_context_layers`` says whether :meth:`Runner.layer_times_ms` works; otherwise the profiler times
    isolated layers. ``per_node_profiler_cost``: a profiled run is slower by a fixed cost per node (see
    :func:`itcp_deploy.profiling.profiler.split_layers`).
    """

    name: str = ""
    source: str = "onnx"
    in_context_layers: bool = True
    per_node_profiler_cost: bool = True

    @abstractmethod
    def version(self) -> str:
        """Backend version string (part of every cache key)."""

    @abstractmethod
    def builder(
        self, source: Any, artifact_dir: Path, options: EngineOptions, input_shape: tuple[int, ...] | None = None
    ) -> Callable[[], Path]:
        """A zero-argument builder (``XFromY``) writing the artifact under ``artifact_dir``.
        ``source``: an ONNX path (``source == "onnx"``) or an ``nn.Module`` (``source == "torch"``, which
        needs ``input_shape``)."""

    @abstractmethod
    def runner(self, artifact: Artifact, options: EngineOptions) -> Runner:
        """A runner for an artifact this backend built."""

    def settings(self, options: EngineOptions) -> dict:
        """Backend-specific build settings that change the engine, for cache keys (none by default)."""
        return {}

    def device_name(self, options: EngineOptions) -> str:
        """The device the engines run on, for cache keys."""
        from itcp_deploy.engines.device import device_name

        return device_name(options.device)

    def layer_nodes(self, layer_names: list[str], artifact: Path, onnx_path: Path) -> dict[str, str | None]:
        """Map backend layer names (from :meth:`Runner.layer_times_ms`) to the ONNX Conv/Gemm node each
        belongs to (``None``: not a Conv/Linear layer, counted as "other"; ``ATTACHED + node``: not that
        layer, but an op whose cost follows its output width, kept as the layer's ``ATTACHED`` time)."""
        return dict.fromkeys(layer_names)
