"""``TrtRunner``: runs a serialized TensorRT engine with ``execute_async_v3``, replayed as a CUDA graph.

Device memory, streams, events and graphs come from torch (CUDA tensors, ``torch.cuda.Stream``/``Event``/
``CUDAGraph``), not pycuda: torch is already required, so that is one dependency less, and one CUDA context
is shared with everything else the process does on the GPU.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from itcp_deploy.engines.backend import Backend
from itcp_deploy.engines.base import Artifact, EngineOptions, Runner
from itcp_deploy.engines.tensorrt.build import PLAN, EngineFromOnnx, load_tensorrt


class CudaOps:
    """The few CUDA operations the runner needs, through torch (a CPU stand-in in the fake test)."""

    device = "cuda"

    def stream_handle(self) -> int:
        import torch

        return torch.cuda.current_stream().cuda_stream

    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize()


CUDA = CudaOps()


def _profiler_class(trt):
    class LayerProfiler(trt.IProfiler):
        """Sums each layer's reported time over runs (``report_layer_time``: per layer, per run)."""

        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.total_ms: dict[str, float] = defaultdict(float)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.total_ms[layer_name] += ms

    return LayerProfiler


class TrtRunner(Runner):
    """Runs ``engine.plan`` from an :class:`EngineFromOnnx` artifact directory (or a ``.plan`` file)."""

    clock = "cuda"

    def __init__(self, artifact: Artifact, options: EngineOptions | None = None) -> None:
        super().__init__(artifact, options)
        self._trt = self._runtime = self._engine = self._context = None
        self._buffers: dict = {}
        self._graph = None

    def _activate(self, path: Path) -> None:
        import torch

        trt = self._trt = load_tensorrt()
        plan = path / PLAN if path.is_dir() else path
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            from itcp_deploy.errors import InputFileError

            raise InputFileError(f"TensorRT cannot deserialize {plan}", "rebuild it with this TensorRT version")
        self._context = self._engine.create_execution_context()
        for name in self._names():
            shape = tuple(self._engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            buf = torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype, device=CUDA.device)
            self._buffers[name] = buf
            self._context.set_tensor_address(name, buf.data_ptr())

    def _deactivate(self) -> None:
        self._graph = self._context = self._engine = self._runtime = None
        self._buffers = {}

    def _names(self) -> list[str]:
        return [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]

    def _is_input(self, name: str) -> bool:
        return self._engine.get_tensor_mode(name) == self._trt.TensorIOMode.INPUT

    def input_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {
            n: (tuple(b.shape), np.dtype(str(b.dtype).replace("torch.", "")))
            for n, b in self._buffers.items()
            if self._is_input(n)
        }

    def _copy_in(self, feeds: dict[str, np.ndarray]) -> None:
        import torch

        for name, arr in feeds.items():
            self._buffers[name].copy_(torch.from_numpy(arr))

    def _execute(self) -> None:
        self._context.execute_async_v3(CUDA.stream_handle())

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._copy_in(feeds)
        self._execute()
        CUDA.synchronize()
        return {n: b.cpu().numpy() for n, b in self._buffers.items() if not self._is_input(n)}

    def _prepare(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
        self._copy_in(feeds)
        self._execute()  # TensorRT does lazy setup on the first run; it must not happen inside a capture
        CUDA.synchronize()
        if not self.options.cuda_graphs:
            return self._execute
        import torch

        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._execute()
        return self._graph.replay

    def synchronize(self) -> None:
        CUDA.synchronize()

    def layer_times_ms(self, feeds, runs: int, warmup: int) -> dict[str, float] | None:
        """Per-layer times from an ``IProfiler`` (synchronous runs, no CUDA graph: profiling needs per-layer
        callbacks)."""
        self._copy_in(self._check(feeds))
        for _ in range(warmup):
            self._execute()
        CUDA.synchronize()
        profiler = _profiler_class(self._trt)()
        self._context.profiler = profiler
        for _ in range(runs):
            self._execute()
            CUDA.synchronize()
        self._context.profiler = None
        return {name: total / runs for name, total in profiler.total_ms.items()}

    def layer_info(self) -> str:
        """The engine inspector's JSON description of every layer (fused names, tactics, formats)."""
        inspector = self._engine.create_engine_inspector()
        return inspector.get_engine_information(self._trt.LayerInformationFormat.JSON)


class TrtBackend(Backend):
    """Native TensorRT (10.x, 11.x): needs ``pip install 'itcp-deploy[tensorrt]'`` and a CUDA device."""

    name = "tensorrt"
    source = "onnx"
    in_context_layers = True

    def version(self) -> str:
        from itcp_deploy.engines.lazy_import import require

        return require("tensorrt", "tensorrt").__version__

    def builder(self, source, artifact_dir: Path, options: EngineOptions, input_shape=None) -> EngineFromOnnx:
        return EngineFromOnnx(source, artifact_dir, options)

    def runner(self, artifact: Artifact, options: EngineOptions) -> TrtRunner:
        return TrtRunner(artifact, options)

    def device_name(self, options: EngineOptions) -> str:
        from itcp_deploy.engines.device import device_name

        return device_name("cuda")

    def layer_nodes(self, layer_names: list[str], artifact: Path, onnx_path: Path) -> dict[str, str | None]:
        """TensorRT names fused layers by joining ONNX node names (``/conv1/Conv + /Relu``), reformat layers
        after the tensor they serve; the first token that is an ONNX Conv/Gemm/MatMul node wins."""
        import onnx

        graph = onnx.load(str(onnx_path), load_external_data=False).graph
        layer_nodes = {n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")}
        out: dict[str, str | None] = {}
        for name in layer_names:
            tokens = [t for t in re.split(r"\s+\+\s+|\s+|[\[\]()]", name) if t]
            out[name] = next((t for t in tokens if t in layer_nodes), None)
        return out
