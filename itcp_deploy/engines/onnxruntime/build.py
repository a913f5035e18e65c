"""``SessionFromOnnx``: ONNX -> an onnxruntime artifact directory (the original model + the optimised one).

Building runs onnxruntime's graph optimiser once (level ALL: constant folding, Conv+BN/Relu/Add fusion and,
on CPU, the NCHWc layout transform) and saves the result through ``SessionOptions.optimized_model_filepath``,
so loading it later skips the optimiser and every run of the cache times exactly the same graph. The saved
graph may contain CPU-specific NCHWc kernels, so it is only valid on the machine that built it, which the
profiling cache key (device + onnxruntime version) guarantees.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from itcp_deploy.atomic_io import atomic_path
from itcp_deploy.engines.base import EngineOptions, OnnxBuilder
from itcp_deploy.errors import InputFileError, ItcpError, MissingDependencyError, UsageError, is_out_of_memory

ORIGINAL = "model.onnx"
OPTIMIZED = "model.opt.onnx"
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def providers(options: EngineOptions) -> list[str]:
    """The execution providers for ``options.provider``, with CPU as fallback for unassigned nodes.

    Raises:
        MissingDependencyError: the provider is not in this onnxruntime build (install onnxruntime-gpu).
    """
    import onnxruntime as ort

    name = PROVIDERS.get(options.provider)
    if name is None:
        raise UsageError(f"unknown onnxruntime provider {options.provider!r}", f"use one of: {', '.join(PROVIDERS)}")
    if name not in ort.get_available_providers():
        raise MissingDependencyError(
            f"onnxruntime has no {name} in this install",
            "needs `pip install 'itcp-deploy[gpu]'` (onnxruntime-gpu) and a CUDA device",
        )
    return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]


def session_options(options: EngineOptions, optimize: bool = True):
    """Fixed threading: ``intra_op_num_threads=options.threads``, one inter-op thread, sequential."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = options.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.log_severity_level = 3
    return so


#: onnxruntime's optimisers that change a graph's precision: WeightBiasQuantization quantizes the float weights
#: of a Conv it finds between a DequantizeLinear and a QuantizeLinear, so an FP32 group between two INT8 groups of
#: a mixed Q/DQ graph (:mod:`itcp_deploy.engines.mixed`) would run INT8. Precision lives in the graph.
DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]


def open_session(path: Path, so, options: EngineOptions):
    """An ``InferenceSession`` whose load failures (unparseable file, unsupported operator) are one line."""
    import onnxruntime as ort

    state = ort.capi.onnxruntime_pybind11_state
    load_errors = tuple(
        getattr(state, n)
        for n in (
            "Fail",
            "InvalidGraph",
            "InvalidProtobuf",
            "NotImplemented",
            "InvalidArgument",
            "NoSuchFile",
            "RuntimeException",
        )
    )
    try:
        return ort.InferenceSession(os.fspath(path), so, providers=providers(options),
                                    disabled_optimizers=DISABLED_OPTIMIZERS)
    except load_errors as err:
        raise _load_error(path, err) from err


def _load_error(path: Path, err: Exception) -> ItcpError:
    """One line for a failed load. The path is said once (onnxruntime repeats it, and a long path used to
    push the cause past the cut), and running out of memory is not blamed on the file."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    first = first.replace(os.fspath(path), "<model>")
    if is_out_of_memory(err):
        size_mb = path.stat().st_size / 1e6 if path.exists() else 0.0
        return ItcpError(f"onnxruntime ran out of memory loading {path} ({size_mb:.0f} MB): {first[:200]}",
                         "free memory (fewer engines open at once, a smaller model or input) or raise the "
                         "process's memory limit")
    return InputFileError(
        f"onnxruntime cannot load {path}: {first[:300]}",
        "check that the file is a valid ONNX model whose operators this onnxruntime "
        "supports at this precision (few fp16 kernels exist on the CPU provider)",
    )


class SessionFromOnnx(OnnxBuilder):
    """Build an onnxruntime artifact directory from an ONNX file; call it to build.

    Example::

        art = SessionFromOnnx("model.onnx", Path("engines/ort/ab12"), EngineOptions())()
        # engines/ort/ab12/model.onnx (copy of the input), engines/ort/ab12/model.opt.onnx (optimised)
    """

    def _build(self) -> None:
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.artifact_dir / ORIGINAL) as tmp:
            shutil.copyfile(self.onnx_path, tmp)
        with atomic_path(self.artifact_dir / OPTIMIZED) as tmp:
            so = session_options(self.options)
            so.optimized_model_filepath = os.fspath(tmp)
            open_session(self.artifact_dir / ORIGINAL, so, self.options)
