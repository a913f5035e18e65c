"""Latency of one 3x3 conv (+ReLU) on ONNX Runtime CPU over a grid of (input, output) channels: the shape the perf
model's per-layer tables must represent (issue 24). On AVX-512 ONNX Runtime runs convolutions in 16-channel
blocks (NCHWc): cost steps by whole blocks of output channels, and by whole blocks of input channels above 16,
but grows with every input channel below 16 (a narrow input is read directly).

Example (prints a markdown table, microseconds, median of 200 runs after 20 warm-up runs, one thread)::

    python bench/conv_grid.py --hw 32 --max 64 --step 4
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np


def conv_us(cin: int, cout: int, hw: int, runs: int = 200) -> float:
    import onnxruntime as ort
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, cin, hw, hw), buf, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((1, cin, hw, hw), dtype=np.float32)}
    for _ in range(20):
        session.run(None, feed)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples)) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hw", type=int, default=32)
    p.add_argument("--max", type=int, default=64)
    p.add_argument("--step", type=int, default=4)
    args = p.parse_args()
    widths = list(range(args.step, args.max + 1, args.step))
    print("| in \\ out | " + " | ".join(map(str, widths)) + " |")
    print("|---" * (len(widths) + 1) + "|")
    for cin in widths:
        print(f"| {cin} | " + " | ".join(f"{conv_us(cin, c, args.hw):.0f}" for c in widths) + " |", flush=True)


if __name__ == "__main__":
    main()
