"""From a (pruned) torch model to a built engine on disk: export ONNX -> precision -> backend build.

The profiler builds dozens of candidate engines through its cache; the pipeline and the demo build the dense
and final engines here, into the run's output directory.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from itcp_deploy.atomic_io import atomic_path
from itcp_deploy.engines.base import EngineOptions

#: the file a user deploys, per backend, copied out of the artifact directory.
MAIN_FILE = {"onnxruntime": ("model.opt.onnx", ".ort.onnx"), "tensorrt": ("engine.plan", ".plan")}


@dataclass(frozen=True)
class EngineSpec:
    """Which engine to build: backend, precision, run options and (int8) calibration set."""

    backend: str = "onnxruntime"
    precision: str = "fp32"
    options: EngineOptions = field(default_factory=EngineOptions)
    calib: str | None = None


@dataclass(frozen=True)
class BuiltEngine:
    """``artifact``: what the backend's runner loads; ``main_file``: the one file to deploy (or None)."""

    onnx_path: Path | None
    artifact: Path
    main_file: Path | None


def build_engine(model, input_shape: tuple[int, int, int, int], out_dir: Path, name: str,
                 spec: EngineSpec) -> BuiltEngine:
    """Export ``model`` to ``out_dir/<name>.onnx`` (verified), convert precision, build into
    ``out_dir/engines/<name>/`` and copy the deployable file to ``out_dir/<name><suffix>``."""
    from itcp_deploy.engines import get_backend
    from itcp_deploy.engines.int8 import engine_int8_settings
    from itcp_deploy.engines.precision import convert_precision

    backend = get_backend(spec.backend)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact_dir = out_dir / "engines" / name
    onnx_path: Path | None = None
    if backend.source == "onnx":
        from itcp_deploy.export import export_onnx

        onnx_path = export_onnx(model, input_shape, out_dir / f"{name}.onnx")
        source = onnx_path
        if spec.precision != "fp32":
            calib = None
            if spec.precision == "int8":
                from itcp_deploy.data.calibration import load_calibration

                calib = load_calibration(spec.calib, input_shape)
            int8 = engine_int8_settings(spec.backend, spec.precision, spec.options.provider)
            source = convert_precision(onnx_path, out_dir / f"{name}.{spec.precision}.onnx", spec.precision,
                                       calib, int8=int8)
    else:
        source = model
    artifact = Path(backend.builder(source, artifact_dir, spec.options, tuple(input_shape))())
    main_file = None
    if spec.backend in MAIN_FILE:
        inner, suffix = MAIN_FILE[spec.backend]
        main_file = out_dir / f"{name}{suffix}"
        with atomic_path(main_file) as tmp:
            shutil.copyfile(artifact / inner, tmp)
    return BuiltEngine(onnx_path, artifact, main_file)
