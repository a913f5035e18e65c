"""``CompiledModelFromOnnx``: ONNX -> an OpenVINO compiled model for the CPU, saved as a blob (``model.blob``).

OpenVINO reads the ONNX file into an ``ov.Model``, runs its own transformation pipeline (Conv+Add+Relu fusion,
constant folding, its blocked channel layouts) and compiles CPU kernels. ``export_model`` saves the result, so
loading skips the transformations and every run of the cache times the same graph. The blob is only valid for
this OpenVINO version and CPU, which the profiling cache key (device + openvino version) guarantees.

Run-time properties are not stored in the blob (an imported blob runs at whatever precision and thread count
the import asks for), so :func:`compile_properties` is passed on every compile *and* every import:

* ``INFERENCE_NUM_THREADS = options.threads`` and the performance hint ``options.perf_hint`` (the engine spec);
* ``INFERENCE_PRECISION_HINT = f32``: on CPUs with bf16 or AMX units OpenVINO would otherwise silently run
  an fp32 graph in bf16. Precision lives in the graph here, as for every backend (an int8 Q/DQ graph still
  runs int8 kernels).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from itcp_deploy.atomic_io import atomic_write
from itcp_deploy.engines.base import EngineOptions, OnnxBuilder
from itcp_deploy.engines.lazy_import import require
from itcp_deploy.errors import InputFileError, UsageError

BLOB = "model.blob"
DEVICE = "CPU"
HINTS = ("latency", "throughput")


def load_openvino():
    """``import openvino``, or one line naming ``pip install 'itcp-deploy[openvino]'``."""
    return require("openvino", "openvino")


@functools.cache
def core():
    """One ``ov.Core`` per process: each Core loads its own copy of the device plugins."""
    return load_openvino().Core()


def compile_properties(options: EngineOptions, profiling: bool = False) -> dict:
    """CPU properties for ``options`` (see the module docstring); ``profiling`` turns performance counters on."""
    ov = load_openvino()
    import openvino.properties as props
    import openvino.properties.hint as hints

    if options.perf_hint not in HINTS:
        raise UsageError(f"unknown OpenVINO performance hint {options.perf_hint!r}", f"use one of: {', '.join(HINTS)}")
    if options.device != "cpu":
        raise UsageError(f"the openvino backend runs on the CPU, not {options.device!r}", "drop --device")
    return {
        props.inference_num_threads(): options.threads,
        hints.performance_mode(): getattr(hints.PerformanceMode, options.perf_hint.upper()),
        hints.inference_precision(): ov.Type.f32,
        props.enable_profiling(): profiling,
    }


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


def compile_file(path: Path, options: EngineOptions, profiling: bool = False):
    """Compile an ONNX or IR (``.xml``) file, or import a blob, with :func:`compile_properties`.

    Raises:
        InputFileError: OpenVINO cannot read, convert or import the file (one line with its first message).
    """
    properties = compile_properties(options, profiling)
    try:
        if path.suffix in (".onnx", ".xml"):
            return core().compile_model(core().read_model(os.fspath(path)), DEVICE, properties)
        return core().import_model(path.read_bytes(), DEVICE, properties)
    except RuntimeError as err:
        raise InputFileError(
            f"OpenVINO cannot load {path}: {_one_line(err)}",
            "check that it is a valid ONNX model, or a blob built by this OpenVINO version on this CPU",
        ) from err


class CompiledModelFromOnnx(OnnxBuilder):
    """Build an OpenVINO artifact directory (``model.blob``) from an ONNX file; call it to build.

    Example::

        art = CompiledModelFromOnnx("model.onnx", Path("engines/ov/ab12"), EngineOptions())()
        # engines/ov/ab12/model.blob, loaded by OvRunner
    """

    def _build(self) -> None:
        blob = compile_file(self.onnx_path, self.options).export_model()
        data = blob.getvalue() if hasattr(blob, "getvalue") else bytes(blob)
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.artifact_dir / BLOB, lambda f: f.write(data))
