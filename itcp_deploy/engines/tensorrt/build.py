"""``EngineFromOnnx``: ONNX -> a serialized TensorRT engine (``engine.plan``), for TensorRT 10.x and 11.x.

TensorRT 11 is strongly typed: precision comes from the ONNX graph (fp16 graph, Q/DQ for int8), never from
builder flags. On TensorRT 10 the network is created with ``STRONGLY_TYPED`` too, when the flag exists, so
both versions build the same engine from the same graph. A persistent timing cache (``options.timing_cache``,
under ``engines/`` by default) is loaded before and saved after every build, so rebuilding a similar network
skips most tactic timing.
"""

from __future__ import annotations

import os
from pathlib import Path

from itcp_deploy.atomic_io import atomic_write
from itcp_deploy.engines.base import OnnxBuilder
from itcp_deploy.engines.lazy_import import require, require_cuda
from itcp_deploy.errors import InputFileError

PLAN = "engine.plan"


def load_tensorrt():
    """Import tensorrt and check for a GPU, in that order, before any Builder or Runtime exists (creating one
    without a CUDA device aborts the process instead of raising)."""
    trt = require("tensorrt", "tensorrt")
    require_cuda("TensorRT")
    return trt


def parse_onnx(trt, builder, logger, onnx_path: Path):
    """Create a (strongly typed where supported) network and parse ``onnx_path`` into it.

    Raises:
        InputFileError: the parser rejects the file; one line with the first error and the error count.
    """
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        first = errors[0].desc() if errors else "unknown parser error"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputFileError(
            f"TensorRT cannot parse {onnx_path}: {first}{more}",
            "check that the ONNX model is valid and uses operators TensorRT supports",
        )
    return network, parser


class EngineFromOnnx(OnnxBuilder):
    """Build a TensorRT engine from an ONNX file into ``artifact_dir/engine.plan``; call it to build."""

    def _build(self) -> None:
        trt = load_tensorrt()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network, _parser = parse_onnx(trt, builder, logger, self.onnx_path)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.options.workspace_mb << 20)
        config.builder_optimization_level = self.options.opt_level
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names for the engine inspector
        cache_path = Path(self.options.timing_cache) if self.options.timing_cache else None
        blob = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise InputFileError(
                f"TensorRT could not build an engine from {self.onnx_path}",
                "raise the workspace (--workspace-mb on run and profile-engines) or check the builder log above",
            )
        if cache_path is not None:
            timing = config.get_timing_cache().serialize()
            atomic_write(cache_path, lambda f: f.write(bytes(timing)))
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.artifact_dir / PLAN, lambda f: f.write(bytes(plan)))
