"""From a (pruned) torch model to a built engine on disk: export ONNX -> precision -> backend build, written
once (:func:`build_chain`). The profiler builds dozens of candidate engines through it into its cache; the
pipeline builds the dense, round and final engines with :func:`build_engine`, into the run's folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from itcp_deploy.atomic_io import atomic_path
from itcp_deploy.engines.base import EngineOptions

#: the file a user deploys, per backend, copied out of the artifact directory.
MAIN_FILE = {
    "onnxruntime": ("model.opt.onnx", ".ort.onnx"),
    "openvino": ("model.blob", ".ov.blob"),
    "tensorrt": ("engine.plan", ".plan"),
}


@dataclass(frozen=True)
class EngineSpec:
    """Which engine to build: backend, precision, run options and (int8, mixed) calibration set;
    ``int8_layers``: a mixed engine's INT8 layers (module names, :mod:`itcp_deploy.engines.mixed`)."""

    backend: str = "onnxruntime"
    precision: str = "fp32"
    options: EngineOptions = field(default_factory=EngineOptions)
    calib: str | None = None
    int8_layers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class BuiltEngine:
    """``artifact``: what the backend's runner loads; ``main_file``: the one file to deploy (or None)."""

    onnx_path: Path | None
    artifact: Path
    main_file: Path | None


@dataclass(frozen=True)
class ChainPaths:
    """Where the chain writes: the exported fp32 ONNX, its precision-converted copy, the artifact directory."""

    onnx: Path
    converted: Path
    artifact: Path


def build_chain(model, input_shape: tuple[int, ...], spec: EngineSpec, paths: ChainPaths,
                calib=None) -> tuple[Path | None, Path]:
    """The one export -> precision -> build chain (the profiler's candidates, the run's dense, round and
    final engines): export ``model`` to ONNX (verified), convert it to ``spec.precision`` (int8: with
    ``calib``, else the set ``spec.calib``), build the backend's artifact. The torch backend builds from the
    module itself. Returns the fp32 ONNX path (None for torch) and the artifact directory."""
    from itcp_deploy.engines import get_backend
    from itcp_deploy.engines.int8 import engine_int8_settings
    from itcp_deploy.engines.precision import convert_precision

    backend = get_backend(spec.backend)
    onnx_path: Path | None = None
    if backend.source == "onnx":
        from itcp_deploy.engines.export import export_onnx

        onnx_path = export_onnx(model, input_shape, paths.onnx)
        source = onnx_path
        if spec.precision != "fp32":
            if calib is None and spec.precision in ("int8", "mixed"):
                from itcp_deploy.data.calibration import load_calibration

                calib = load_calibration(spec.calib, input_shape)
            int8 = engine_int8_settings(spec.backend, spec.precision, spec.options.provider)
            source = convert_precision(onnx_path, paths.converted, spec.precision, calib, int8=int8,
                                       int8_layers=spec.int8_layers)
    else:
        source = model
    artifact = Path(backend.builder(source, paths.artifact, spec.options, tuple(input_shape))())
    return onnx_path, artifact


def build_engine(model, input_shape: tuple[int, int, int, int], out_dir: Path, name: str,
                 spec: EngineSpec) -> BuiltEngine:
    """Export ``model`` to ``out_dir/<name>.onnx`` (verified), convert precision, build into
    ``out_dir/engines/<name>/`` and copy the deployable file to ``out_dir/<name><suffix>``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = ChainPaths(out_dir / f"{name}.onnx", out_dir / f"{name}.{spec.precision}.onnx", out_dir / "engines" / name)
    onnx_path, artifact = build_chain(model, input_shape, spec, paths)
    main_file = None
    if spec.backend in MAIN_FILE:
        inner, suffix = MAIN_FILE[spec.backend]
        main_file = out_dir / f"{name}{suffix}"
        with atomic_path(main_file) as tmp:
            shutil.copyfile(artifact / inner, tmp)
    return BuiltEngine(onnx_path, artifact, main_file)
