"""Would quantizing fewer node kinds raise a mixed engine's agreement with its FP32 model (issue 27)? Re-quantizes
a finished mixed run's FP32 model (``model.onnx``) at its INT8 layers (the shipped Q/DQ model's metadata) with
the product's ``to_int8`` and the run's calibration set, three ways: every node of those layers (what the
product ships), every node but the residual Adds, and only their Conv/Gemm nodes; then measures each engine's
top-1 and its agreement with the FP32 model on the first N test images, one image at a time. Usage::

    OMP_NUM_THREADS=1 python bench/int8_node_subsets.py RUN CALIB.npz [RUN CALIB.npz ...] \\
        --data cifar10:../shared/data/cifar10-jpeg --test-samples 2000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itcp_deploy.data import load_dataset, make_loader  # noqa: E402
from itcp_deploy.data.calibration import load_calibration  # noqa: E402
from itcp_deploy.engines import EngineOptions  # noqa: E402
from itcp_deploy.engines.evaluate import engine_outputs  # noqa: E402
from itcp_deploy.engines.mixed import META_INT8_LAYERS, int8_nodes  # noqa: E402
from itcp_deploy.engines.precision import to_int8  # noqa: E402

SUBSETS = {"all": lambda op: True, "no-add": lambda op: op != "Add", "conv-only": lambda op: op in ("Conv", "Gemm")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pairs", nargs="+", help="RUN CALIB.npz pairs: a mixed run folder and its calibration set")
    p.add_argument("--data", default="cifar10:../shared/data/cifar10-jpeg")
    p.add_argument("--test-samples", type=int, default=2000)
    args = p.parse_args(argv)
    if len(args.pairs) % 2:
        p.error("give each run folder with its calibration set")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    batches = list(make_loader(load_dataset(args.data, "test", augment=False), 64, shuffle=False,
                               max_samples=args.test_samples))
    tmp = Path(tempfile.mkdtemp(prefix="itcp-node-subsets-"))
    print("| run | nodes at INT8 | count | top-1 | agreement with FP32 | FP32 top-1 |")
    print("|---|---|---|---|---|---|")
    for run, calib in zip(map(Path, args.pairs[::2]), args.pairs[1::2], strict=True):
        model = onnx.load(str(run / "model.onnx"))
        shipped = onnx.load(str(run / "model.mixed.onnx"), load_external_data=False)
        layers = {p.key: p.value for p in shipped.metadata_props}[META_INT8_LAYERS].split(",")
        ops = {n.name: n.op_type for n in model.graph.node}
        fp32 = engine_outputs("onnxruntime", run / "model.onnx", EngineOptions(), batches, args.test_samples)
        for name, keep in SUBSETS.items():
            nodes = [n for n in int8_nodes(model, layers) if keep(ops.get(n, ""))]
            dst = to_int8(run / "model.onnx", tmp / f"{run.name}-{name}.onnx", load_calibration(calib), nodes=nodes)
            out = engine_outputs("onnxruntime", dst, EngineOptions(), batches, args.test_samples)
            cells = (run.name, name, len(nodes), f"{out.top1:.2f}", f"{out.agreement(fp32):.4f}", f"{fp32.top1:.2f}")
            print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
