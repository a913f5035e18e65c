"""``OrtRunner``: runs an onnxruntime artifact with fixed threads; per-layer times from session profiling."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from itcp_deploy.engines.backend import Backend
from itcp_deploy.engines.base import Artifact, EngineOptions, Runner
from itcp_deploy.engines.onnxruntime.build import (
    OPTIMIZED,
    ORIGINAL,
    SessionFromOnnx,
    open_session,
    session_options,
)

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def model_file(path: Path) -> Path:
    """An artifact directory's optimised model, or ``path`` itself when given an ONNX file."""
    return path / OPTIMIZED if path.is_dir() else path


class OrtRunner(Runner):
    """Runs the optimised model of a :class:`SessionFromOnnx` artifact (or any ONNX file)."""

    def __init__(self, artifact: Artifact, options: EngineOptions | None = None) -> None:
        super().__init__(artifact, options)
        self._session = None
        self._binding = None

    def _activate(self, path: Path) -> None:
        self._session = open_session(model_file(path), session_options(self.options), self.options)

    def _deactivate(self) -> None:
        self._session = None
        self._binding = None

    def input_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {i.name: (tuple(i.shape), np.dtype(_DTYPES[i.type])) for i in self._session.get_inputs()}

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self._session.get_outputs()]
        return dict(zip(names, self._session.run(names, feeds), strict=True))

    def _prepare(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
        # IO binding: inputs copied once, outputs reused, so run_once times only the graph.
        binding = self._session.io_binding()
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, arr)
        for out in self._session.get_outputs():
            binding.bind_output(out.name)
        self._binding = binding
        session = self._session
        return lambda: session.run_with_iobinding(binding)

    def layer_times_ms(self, feeds, runs: int, warmup: int) -> dict[str, float] | None:
        """Profile a second session of the same model: profiling slows runs; never the timed one."""
        from itcp_deploy.engines.onnxruntime.node_profile import read_node_times_ms

        feeds = self._check(feeds)
        with tempfile.TemporaryDirectory(prefix="itcp-ortprof-") as tmp:
            so = session_options(self.options)
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "ort")
            session = open_session(model_file(self.path), so, self.options)
            for _ in range(warmup + runs):
                session.run(None, feeds)
            times, _ = read_node_times_ms(session.end_profiling(), warmup_runs=warmup)
        return times


class OrtBackend(Backend):
    """onnxruntime (default backend): CPU provider, or CUDA/TensorRT providers with onnxruntime-gpu."""

    name = "onnxruntime"
    source = "onnx"
    in_context_layers = True

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def builder(self, source, artifact_dir: Path, options: EngineOptions, input_shape=None) -> SessionFromOnnx:
        return SessionFromOnnx(source, artifact_dir, options)

    def runner(self, artifact: Artifact, options: EngineOptions) -> OrtRunner:
        return OrtRunner(artifact, options)

    def device_name(self, options: EngineOptions) -> str:
        from itcp_deploy.engines.device import device_name

        return device_name("cpu" if options.provider == "cpu" else "cuda")

    def layer_nodes(self, layer_names: list[str], artifact: Path, onnx_path: Path) -> dict[str, str | None]:
        from itcp_deploy.engines.onnxruntime.node_profile import attribute_nodes

        mapping = attribute_nodes(model_file(artifact), artifact / ORIGINAL if artifact.is_dir() else onnx_path)
        return {name: mapping.get(name) for name in layer_names}
