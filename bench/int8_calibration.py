"""Would another INT8 calibration raise a mixed engine's agreement with its FP32 model (issue 27 asks >= 0.95;
two one-shot 4x engines of bench/mixed_table.py measured 0.942 and 0.926)? Re-quantizes a finished variant's
one-shot model (the same INT8 layers, the same calibration set) with ONNX Runtime's MinMax (what the product
uses), Percentile and Entropy calibration, and measures each engine's top-1 and its agreement with the FP32
ONNX model on the test subset.

    python bench/int8_calibration.py --model cifar_resnet20 runs/mixed-r20/runs/s0-x4-d

Each RUN is a variant folder of bench/mixed_table.py (``oneshot/model.onnx``, ``oneshot/model.mixed.onnx``, and
``../../calib/calib-s<seed>.npz``). One JSON line per run: per method [agreement, top-1].
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime.quantization as quantization
import torch

from itcp_deploy.data import make_loader
from itcp_deploy.engines.mixed import META_INT8_LAYERS, int8_nodes
from itcp_deploy.engines.precision import to_int8
from itcp_deploy.pipeline.from_specs import ModelSource, load_inputs

METHODS = {"minmax": {}, "percentile": {"calibrate_method": quantization.CalibrationMethod.Percentile},
           "entropy": {"calibrate_method": quantization.CalibrationMethod.Entropy}}


def predictions(path: Path, images: np.ndarray) -> np.ndarray:
    """Top-1 classes of ``images`` through the ONNX model at ``path`` (one thread, batch 1)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + 1]})[0] for i in range(len(images))]).argmax(1)


def requantized(run: Path, method: str, dst: Path) -> Path:
    """The run's one-shot model quantized at its mixed engine's INT8 layers, calibrated by ``method``."""
    src, mixed = run / "oneshot" / "model.onnx", onnx.load(run / "oneshot" / "model.mixed.onnx")
    layers = next(p.value for p in mixed.metadata_props if p.key == META_INT8_LAYERS).split(",")
    calib = np.load(run.parents[1] / "calib" / f"calib-s{run.name[1]}.npz")
    original = quantization.quantize_static
    quantization.quantize_static = lambda *a, **k: original(*a, **{**k, **METHODS[method]})  # to_int8 imports it
    try:
        return to_int8(src, dst, calib[calib.files[0]], nodes=int8_nodes(onnx.load(src), set(layers)))
    finally:
        quantization.quantize_static = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--data", default="cifar10:../shared/data/cifar10-jpeg")
    parser.add_argument("--test-samples", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/int8-calibration"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    inputs = load_inputs(ModelSource(args.model, args.data, None), 0)
    batches = list(make_loader(inputs.test, 64, shuffle=False, max_samples=args.test_samples))
    images, labels = torch.cat([x for x, _ in batches]).numpy(), torch.cat([y for _, y in batches]).numpy()
    args.work.mkdir(parents=True, exist_ok=True)
    for run in args.runs:
        fp32 = predictions(run / "oneshot" / "model.onnx", images)
        row: dict = {"run": str(run), "fp32_top1": float((fp32 == labels).mean())}
        for method in METHODS:
            pred = predictions(requantized(run, method, args.work / f"{run.name}-{method}.onnx"), images)
            row[method] = [round(float((pred == fp32).mean()), 4), round(float((pred == labels).mean()), 4)]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
