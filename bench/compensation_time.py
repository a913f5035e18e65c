"""Least-squares compensation's wall time and what it gives, at a checkout: run it at two (``PYTHONPATH``) to
compare the code before and after a change.

Each model is pruned to about 60% of each group's channels (the channels of largest L1 norm), compensated
(``itcp_deploy.pruning.compensate``) on ``--batches`` calibration batches, BatchNorm re-estimated on 20 more,
then scored on the test images. With ``--weights`` and ``--data``, top-1 of the published CIFAR ResNets on
CIFAR-10 (a change that only reorganises the work must leave it, and the outputs, unchanged); without, random
weights and synthetic images at ``--size``, where the time and the outputs' distance to the dense model's are
what can be compared. One JSON line per model.

    OMP_NUM_THREADS=1 python bench/compensation_time.py cifar_resnet56 \\
        --weights ../shared/weights/cifar10-resnet/resnet56-4bfd9763.th --data cifar10:../shared/data/cifar10-jpeg \\
        --test ../shared/data/cifar10-exact-test-1017 --size 32 --batch 64
    OMP_NUM_THREADS=1 python bench/compensation_time.py torchvision:resnet50 --size 224 --batch 16
    OMP_NUM_THREADS=1 python bench/compensation_time.py torchvision:mobilenet_v3_large --size 224 --max-positions 1024
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from itcp_deploy.models import create_model
from itcp_deploy.pruning import apply_widths, build_space, channel_importance
from itcp_deploy.pruning import compensate as comp
from itcp_deploy.pruning.compensate import CompensationSettings, compensate, kept_channels
from itcp_deploy.train import recalibrate_bn


def batches_of(args: argparse.Namespace, split: str, n: int, seed: int) -> list:
    """``n`` batches of ``args.batch`` images: the dataset's (unaugmented) or random ones."""
    if args.data is None:
        g = torch.Generator().manual_seed(seed)
        return [(torch.randn(args.batch, 3, args.size, args.size, generator=g), None) for _ in range(n)]
    from itcp_deploy.data.datasets import load_dataset

    spec = args.data if split == "train" else args.test
    data = load_dataset(spec, "train" if split == "train" else "test", augment=False).dataset
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=split == "train",
                                         generator=torch.Generator().manual_seed(seed))
    return [b for _, b in zip(range(n), loader, strict=False)]


def score(model: torch.nn.Module, dense: torch.nn.Module, test: list) -> dict:
    """Top-1 on labelled test batches, and the outputs' mean squared distance to the dense model's."""
    correct = total = 0
    dist = 0.0
    with torch.no_grad():
        for x, y in test:
            out = model(x)
            dist += float(((out - dense(x)) ** 2).mean()) / len(test)
            if y is not None:
                correct, total = correct + int((out.argmax(1) == y).sum()), total + len(y)
    return {"top1": round(100.0 * correct / total, 2) if total else None, "mse_to_dense": dist}


def timed_helpers() -> dict[str, float]:
    """Wrap compensation's capture helpers so that their seconds add up in the returned dict (``pruned_capture_s``:
    the pruned network's forwards to each layer; ``dense_targets_s``: the dense outputs, where the code has them
    apart); what is left of the total is mostly the least squares."""
    spent: dict[str, float] = {}
    for name, key in (("_capture", "pruned_capture_s"), ("_dense_targets", "dense_targets_s")):
        inner = getattr(comp, name, None)
        if inner is None:
            continue

        def timed(*a, inner=inner, key=key):
            t0 = time.perf_counter()
            try:
                return inner(*a)
            finally:
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - t0
        setattr(comp, name, timed)
    return spent


def run(args: argparse.Namespace, spec: str, spent: dict[str, float]) -> None:
    torch.manual_seed(0)
    dense = create_model(spec, weights=args.weights, num_classes=10).eval()
    space = build_space(dense, (1, 3, args.size, args.size), model_spec=spec)
    widths = {g.name: g.candidates[max(0, int(len(g.candidates) * 0.6) - 1)] for g in space.prunable}
    importance = channel_importance(dense, space, "l1")
    calib, bn = batches_of(args, "train", args.batches, 1), batches_of(args, "train", 20, 2)
    test = batches_of(args, "test", args.test_batches, 3)
    pruned = apply_widths(dense, space, widths, importance=importance).eval()
    positions = {} if args.max_positions is None else {"max_positions": args.max_positions}  # older code: none
    spent.clear()
    load, t0 = os.getloadavg()[0], time.perf_counter()
    layers = compensate(pruned, dense, space, kept_channels(dense, space, widths, importance), calib,
                        CompensationSettings(num_batches=args.batches, **positions))
    seconds = time.perf_counter() - t0
    recalibrate_bn(pruned, bn, num_batches=20)
    print(json.dumps({"model": spec, "size": args.size, "batch": args.batch, "batches": args.batches,
                      "code": args.label, "max_positions": args.max_positions,
                      "refit_layers": len(layers), "compensate_s": round(seconds, 1),
                      **{k: round(v, 1) for k, v in spent.items()},
                      **score(pruned.eval(), dense, test), "load": [round(load, 2), round(os.getloadavg()[0], 2)]}),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--data", default=None, help="calibration and BatchNorm images (train split)")
    parser.add_argument("--test", default=None, help="the test images' --data spec (default: --data)")
    parser.add_argument("--test-batches", type=int, default=16)
    parser.add_argument("--max-positions", type=int, default=None,
                        help="output positions an image gives a layer's regression (default: the code's own)")
    parser.add_argument("--label", default="", help="what the row says the code was (e.g. its commit)")
    args = parser.parse_args()
    args.test = args.test or args.data
    torch.set_num_threads(1)
    spent = timed_helpers()
    for spec in args.models:
        run(args, spec, spent)


if __name__ == "__main__":
    main()
