"""Precision as an ONNX graph transform: fp32 (as exported), fp16 (float graph), int8 (Q/DQ).

TensorRT 11 is strongly typed (no precision flags), so precision must live in the graph for every backend:
an fp16 engine is built from an fp16 graph and an int8 engine from a Q/DQ graph, on TensorRT and onnxruntime
alike.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from itcp_deploy.atomic_io import atomic_path
from itcp_deploy.engines import device
from itcp_deploy.engines.int8 import META_ISA, META_SETTINGS, Int8Settings, int8_settings
from itcp_deploy.engines.mixed import META_INT8_LAYERS, int8_nodes, keep_float_inputs, unshare_initializers
from itcp_deploy.errors import UsageError

#: mixed: each channel group fp32 or int8, as the search decides (issue 27; :mod:`itcp_deploy.engines.mixed`)
PRECISIONS = ("fp32", "fp16", "int8", "mixed")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", f"use one of: {', '.join(PRECISIONS)}")
    return precision


def to_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Convert float32 weights and ops to float16, keeping float32 inputs and outputs (``keep_io_types``).

    Uses ``onnxruntime.transformers.float16`` (ships with onnxruntime; onnxconverter-common is unmaintained),
    which leaves ops without fp16 kernels in float32 behind Cast nodes. onnxruntime's CPU provider has few
    fp16 kernels: fp16 is meant for GPU backends.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(os.fspath(src)), keep_io_types=True)
    with atomic_path(dst) as tmp:
        onnx.save(model, os.fspath(tmp))
    return Path(dst)


class ArrayCalibrationReader:
    """``CalibrationDataReader`` over an (N, C, H, W) float32 array, one sample per batch of ``batch``."""

    def __init__(self, input_name: str, samples: np.ndarray, batch: int = 1) -> None:
        self.input_name = input_name
        self.samples = np.asarray(samples, dtype=np.float32)
        self.batch = batch
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self.samples):
            return None
        chunk = self.samples[self._pos : self._pos + self.batch]
        self._pos += self.batch
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self._pos = 0


def to_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calib: np.ndarray,
    settings: Int8Settings | None = None,
    nodes: Sequence[str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Static INT8 quantization to a Q/DQ graph with per-channel weights, calibrated on ``calib``.

    ``quant_pre_process`` (shape inference + basic graph optimisation) runs first, as onnxruntime recommends,
    so Conv+BN are folded before scales are computed. The settings (activation and weight types, symmetry,
    ``reduce_range``) depend on the backend and the CPU (:func:`itcp_deploy.engines.int8.int8_settings`) and
    are written into the model's metadata (``itcp_deploy.int8``, ``itcp_deploy.int8_isa``).

    Args:
        src: float32 ONNX model with one input.
        dst: where the Q/DQ model is written (atomically).
        calib: calibration inputs, (N, C, H, W) float32, preprocessed exactly as at inference.
        settings: Defaults to the onnxruntime settings for this machine's CPU.
        nodes: quantize only these nodes (names in ``src``), one Q/DQ pair per consumer; every other node
            reads float tensors (:func:`~itcp_deploy.engines.mixed.keep_float_inputs`). None: every node.
        metadata: more ``metadata_props`` for the Q/DQ model.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, quant_pre_process, quantize_static

    settings = settings or int8_settings("onnxruntime", device.detect_isa())
    input_name = _single_input(src, calib)
    with tempfile.TemporaryDirectory(prefix="itcp-int8-") as tmp, atomic_path(dst) as out:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(os.fspath(src), os.fspath(pre), skip_symbolic_shape=True)
        if nodes is not None:
            unshare_initializers(pre, set(nodes))
        quantize_static(
            os.fspath(pre),
            os.fspath(out),
            ArrayCalibrationReader(input_name, calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=settings.reduce_range,
            activation_type=_quant_type(settings.activations),
            weight_type=_quant_type(settings.weights),
            nodes_to_quantize=list(nodes) if nodes is not None else None,
            extra_options={
                "ActivationSymmetric": settings.symmetric_activations,
                "WeightSymmetric": settings.symmetric_weights,
                "DedicatedQDQPair": nodes is not None,
            },
        )
        quantized = onnx.load(os.fspath(out))
        if nodes is not None:
            keep_float_inputs(quantized, set(nodes))
        onnx.helper.set_model_props(
            quantized,
            {**{p.key: p.value for p in quantized.metadata_props},
             META_SETTINGS: settings.label, META_ISA: device.detect_isa().label(), **(metadata or {})},
        )
        onnx.save(quantized, os.fspath(out))
    return Path(dst)


def _single_input(src: str | os.PathLike[str], calib: np.ndarray) -> str:
    """The name of ``src``'s one input, after checking ``calib`` is a non-empty image batch."""
    import onnx

    model = onnx.load(os.fspath(src), load_external_data=False)
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise UsageError(
            f"INT8 calibration needs a model with one input, {src} has {len(inputs)}",
            "export the model with a single image input",
        )
    if calib.ndim != 4 or len(calib) == 0:
        raise UsageError(
            f"calibration data must be a non-empty (N, C, H, W) array, got shape {calib.shape}",
            "create it with `itcp-deploy calibrate`",
        )
    return inputs[0]


def _quant_type(name: str):
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


def convert_precision(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    precision: str,
    calib: np.ndarray | None = None,
    int8: Int8Settings | None = None,
    int8_layers: Collection[str] | None = None,
) -> Path:
    """Write ``src`` at ``precision`` to ``dst`` (fp32: a copy). int8 and mixed need ``calib``; ``int8`` defaults
    to the onnxruntime settings for this machine's CPU. mixed: ``int8_layers`` (module names) at INT8, every
    other layer FP32 (:mod:`itcp_deploy.engines.mixed`); none of them: an FP32 copy."""
    import shutil

    check_precision(precision)
    if precision == "fp16":
        return to_fp16(src, dst)
    if precision == "mixed" and int8_layers is None:
        raise UsageError("a mixed-precision engine needs its INT8 layers",
                         "build it from a plan with per-group precisions (--precision mixed)")
    if precision == "int8" or (precision == "mixed" and int8_layers):
        if calib is None:
            raise UsageError(
                f"{precision} needs a calibration set",
                "create one with `itcp-deploy calibrate` and pass --calib NAME",
            )
        if precision == "int8":
            return to_int8(src, dst, calib, int8)
        import onnx

        nodes = int8_nodes(onnx.load(os.fspath(src), load_external_data=False), int8_layers)
        return to_int8(src, dst, calib, int8, nodes=nodes, metadata={META_INT8_LAYERS: ",".join(sorted(int8_layers))})
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)
