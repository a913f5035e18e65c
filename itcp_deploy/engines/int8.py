"""Which INT8 quantization settings an engine gets: a pure function of the backend and the CPU's ISA.

ONNX Runtime's quantization guide: on x86-64 with AVX2 or AVX-512 but without VNNI, the u8s8 kernels use
VPMADDUBSW, whose int16 sums of two u8 x s8 products saturate; if accuracy drops, quantize with
``reduce_range`` (7-bit weights) or U8U8. With weights within +-64 a pair sums to at most
2 x 255 x 64 = 32,640 <= 32,767, so nothing saturates, and the u8s8 kernels stay in use (we take
reduce_range). With VNNI or AMX (and on Arm) the kernels accumulate in int32: full 8-bit weights.
Reported in issue 17 for an AVX2-only EPYC (not measurable here): full range agreed with FP32 on 87% of
tests/test_int8.py's images, reduce_range passed its 95% bar.

TensorRT keeps its own scheme: symmetric int8 activations and weights, full range.

The settings' :attr:`Int8Settings.label` goes into the Q/DQ model's metadata, the profile and every cache key,
so engines and profiles quantized one way are never reused for the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from itcp_deploy.engines import device
from itcp_deploy.engines.device import CpuIsa

#: metadata_props keys written into every Q/DQ model.
META_SETTINGS = "itcp_deploy.int8"
META_ISA = "itcp_deploy.int8_isa"
_SHORT = {"uint8": "u8", "int8": "s8"}


@dataclass(frozen=True)
class Int8Settings:
    """Arguments of ``onnxruntime.quantization.quantize_static`` that differ between targets.

    ``activations``/``weights``: ``"uint8"`` or ``"int8"``; symmetric flags as in its ``extra_options``.
    """

    activations: str = "uint8"
    weights: str = "int8"
    reduce_range: bool = False
    symmetric_activations: bool = False
    symmetric_weights: bool = True

    @property
    def label(self) -> str:
        """Short and unique, e.g. ``u8s8``, ``u8s8-reduce-range``, ``s8s8-symmetric``."""
        pair = _SHORT[self.activations] + _SHORT[self.weights]
        parts = [pair, "reduce-range" if self.reduce_range else "", "symmetric" if self.symmetric_activations else ""]
        return "-".join(p for p in parts if p)


#: full 8-bit u8s8, ONNX Runtime's default and fastest where VNNI, AMX or Arm dot products exist.
ORT_FULL_RANGE = Int8Settings()
#: 7-bit weights: no saturation in VPMADDUBSW on x86 without VNNI.
ORT_REDUCE_RANGE = Int8Settings(reduce_range=True)
#: what TensorRT needs: symmetric int8 activations and weights.
TENSORRT = Int8Settings(activations="int8", symmetric_activations=True)


def int8_settings(backend: str, isa: CpuIsa, provider: str = "cpu") -> Int8Settings:
    """The settings for an engine of ``backend`` running on a CPU with ``isa``.

    Args:
        backend: ``"onnxruntime"`` or ``"tensorrt"``.
        isa: the CPU's :class:`~itcp_deploy.engines.device.CpuIsa` (``detect_isa()`` for this machine).
        provider: the onnxruntime execution provider; ``"tensorrt"`` gets TensorRT's settings.
    """
    if backend == "tensorrt" or provider == "tensorrt":
        return TENSORRT
    return ORT_REDUCE_RANGE if isa.u8s8_saturates else ORT_FULL_RANGE


def engine_int8_settings(
    backend: str, precision: str, provider: str = "cpu", isa: CpuIsa | None = None
) -> Int8Settings | None:
    """:func:`int8_settings` for an engine at ``precision`` (None unless int8 or mixed), on this machine's ISA
    by default."""
    if precision not in ("int8", "mixed"):
        return None
    return int8_settings(backend, isa or device.detect_isa(), provider)  # via the module: tests fake it
