"""Top-1 agreement of INT8 with FP32 for each INT8 setting, on this CPU (issue 17).

The model, data and calibration of tests/test_int8.py (digit_net trained 4 epochs on digits, 128 calibration
images, seed 0); agreement on the test's first 200 test images and on all 359, and the median relative logits
error. Usage: ``python bench/int8_agreement.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itcp_deploy.data import load_dataset  # noqa: E402
from itcp_deploy.data.calibration import calibrate, load_calibration  # noqa: E402
from itcp_deploy.engines import EngineOptions, get_backend  # noqa: E402
from itcp_deploy.engines.device import device_name  # noqa: E402
from itcp_deploy.engines.export import export_onnx  # noqa: E402
from itcp_deploy.engines.int8 import ORT_FULL_RANGE, ORT_REDUCE_RANGE, Int8Settings, engine_int8_settings  # noqa: E402
from itcp_deploy.engines.precision import convert_precision  # noqa: E402
from tests.test_int8 import trained_digit_net  # noqa: E402


def outputs(onnx_path: Path, artifact_dir: Path, images: np.ndarray) -> np.ndarray:
    backend, options = get_backend("onnxruntime"), EngineOptions()
    with backend.runner(backend.builder(onnx_path, artifact_dir, options)(), options) as runner:
        return np.concatenate([runner.infer({"input": x[None]})["output"] for x in images])


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="itcp-int8-bench-"))
    fp32 = export_onnx(trained_digit_net(), (1, 3, 32, 32), tmp / "fp32.onnx")
    calib = load_calibration(calibrate("digits", num=128, seed=0, name="digits", out_dir=tmp), (1, 3, 32, 32))
    test = load_dataset("digits", "test", augment=False).dataset
    images = np.stack([test[i][0].numpy() for i in range(len(test))])
    reference = outputs(fp32, tmp / "a32", images)
    print(f"{device_name()}; this CPU's choice: {engine_int8_settings('onnxruntime', 'int8').label}")
    print("| settings | agreement, first 200 (the test's) | agreement, all | median relative logits error |")
    print("|---|---|---|---|")
    for settings in (ORT_FULL_RANGE, ORT_REDUCE_RANGE, Int8Settings(weights="uint8")):
        q8 = convert_precision(fp32, tmp / f"{settings.label}.onnx", "int8", calib, int8=settings)
        q = outputs(q8, tmp / settings.label, images)
        same = q.argmax(1) == reference.argmax(1)
        rel = np.linalg.norm(q - reference, axis=1) / np.linalg.norm(reference, axis=1)
        row = (settings.label, f"{same[:200].mean():.3f}", f"{same.mean():.4f} ({len(same)})", f"{np.median(rel):.4f}")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
