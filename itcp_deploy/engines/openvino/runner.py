"""``OvRunner``: runs an OpenVINO compiled model with one synchronous infer request; per-layer times from
OpenVINO's performance counters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from itcp_deploy.engines.backend import Backend
from itcp_deploy.engines.base import Artifact, EngineOptions, Runner
from itcp_deploy.engines.openvino.build import BLOB, CompiledModelFromOnnx, compile_file, load_openvino


def model_file(path: Path) -> Path:
    """An artifact directory's blob, or ``path`` itself (a blob, an IR ``.xml`` or an ONNX file)."""
    return path / BLOB if path.is_dir() else path


class OvRunner(Runner):
    """Runs ``model.blob`` of a :class:`CompiledModelFromOnnx` artifact (or an ONNX/IR file, compiled on load)."""

    def __init__(self, artifact: Artifact, options: EngineOptions | None = None) -> None:
        super().__init__(artifact, options)
        self._compiled = None
        self._request = None
        self._feeds: dict[str, np.ndarray] = {}

    def _activate(self, path: Path) -> None:
        self._compiled = compile_file(model_file(path), self.options)
        self._request = self._compiled.create_infer_request()

    def _deactivate(self) -> None:
        self._request = None
        self._compiled = None
        self._feeds = {}

    def input_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {
            port.get_any_name(): (tuple(port.get_shape()), np.dtype(port.get_element_type().to_dtype()))
            for port in self._compiled.inputs
        }

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._request.infer(feeds)
        return {port.get_any_name(): np.array(results[port]) for port in self._compiled.outputs}

    def _prepare(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
        # Inputs are set once, as tensors sharing the arrays. run_once starts the request and waits for it: the
        # same synchronous run as infer() without its per-call input dispatch and output copies.
        ov = load_openvino()
        self._feeds = feeds  # the shared tensors point into these arrays: keep them alive
        for name, arr in feeds.items():
            self._request.set_tensor(name, ov.Tensor(arr, shared_memory=True))
        request = self._request

        def run_once() -> None:
            request.start_async()
            request.wait()

        return run_once

    def layer_times_ms(self, feeds, runs: int, warmup: int) -> dict[str, float] | None:
        """Performance counters of a second compiled model of the same blob (counters never run in the timed
        one): node name -> mean ms per run over the quieter half of the runs (executed nodes only).

        Counters are wall time per node, and OpenVINO runs the graph on its own worker thread: on a busy machine
        a descheduled worker inflates whichever node was running, by up to milliseconds. Such a run shows in
        its total, so whole runs are kept or dropped (those whose node total is at most the median total): a
        per-node trim would keep each node's share of the preempted runs."""
        from itcp_deploy.engines.layer_times import quiet_runs_mean

        feeds = self._check(feeds)
        request = compile_file(model_file(self.path), self.options, profiling=True).create_infer_request()
        for _ in range(warmup):
            request.infer(feeds)
        per_run: list[dict[str, float]] = []
        for _ in range(runs):
            request.infer(feeds)
            per_run.append({
                info.node_name: info.real_time.total_seconds() * 1000.0
                for info in request.get_profiling_info()
                if info.status == info.Status.EXECUTED
            })
        return quiet_runs_mean(per_run)


class OvBackend(Backend):
    """OpenVINO on the CPU: needs ``pip install 'itcp-deploy[openvino]'``."""

    name = "openvino"
    source = "onnx"
    in_context_layers = True
    per_node_profiler_cost = False  # counted and plain runs take the same time (measured interleaved)

    def version(self) -> str:
        return load_openvino().__version__

    def builder(self, source, artifact_dir: Path, options: EngineOptions, input_shape=None) -> CompiledModelFromOnnx:
        return CompiledModelFromOnnx(source, artifact_dir, options)

    def runner(self, artifact: Artifact, options: EngineOptions) -> OvRunner:
        return OvRunner(artifact, options)

    def settings(self, options: EngineOptions) -> dict:
        return {"perf_hint": options.perf_hint}

    def layer_nodes(self, layer_names: list[str], artifact: Path, onnx_path: Path) -> dict[str, str | None]:
        from itcp_deploy.engines.openvino.layers import attribute_layers

        runtime = compile_file(model_file(artifact), EngineOptions()).get_runtime_model()
        mapping = attribute_layers(runtime, onnx_path)
        return {name: mapping.get(name) for name in layer_names}
