"""Least-squares compensation with its captures stopped at the layer (the product) against full forwards (before
197d9ba), interleaved on one pruned model: wall time of each, and how far their refit weights differ.

A capture that lets the forward run on costs a whole forward per refit layer and batch, and records a layer's output
after any in-place op that follows it (timm's squeeze-excite SiLU). The plan keeps about 70% of each group's
candidates; the batches are random images. Since the dense outputs come from one forward for many layers
(bench/compensation_time.py), only the pruned network's input captures differ between the two; the rows in
bench/results/compensation_capture.jsonl before that change timed both captures.

    OMP_NUM_THREADS=1 python bench/compensation_capture.py timm:efficientnet_b0 --size 224 --batch 8
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

from itcp_deploy.models import create_model
from itcp_deploy.pruning import apply_widths, build_space, channel_importance
from itcp_deploy.pruning import compensate as comp


def full_capture(model: torch.nn.Module, name: str, batches: list) -> list[torch.Tensor]:
    """The capture of a layer's input before 197d9ba: every forward runs to the end."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(lambda _m, i, o: seen.append(i[0].detach()))
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        handle.remove()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved pairs (full, stopped)")
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = create_model(args.model, num_classes=10).eval()
    space = build_space(dense, (1, 3, args.size, args.size), model_spec=args.model)
    widths = {g.name: g.candidates[max(0, int(len(g.candidates) * 0.7) - 1)] for g in space.prunable}
    importance = channel_importance(dense, space, "l1")
    pruned = apply_widths(dense, space, widths, importance=importance).eval()
    kept = comp.kept_channels(dense, space, widths, importance)
    batches = [(torch.randn(args.batch, 3, args.size, args.size), None) for _ in range(args.batches)]
    stopped_capture, times, models = comp._capture, {"full": [], "stopped": []}, {}
    load = os.getloadavg()[0]
    for _ in range(args.repeats):
        for label, capture in (("full", full_capture), ("stopped", stopped_capture)):
            comp._capture = capture
            model = copy.deepcopy(pruned)
            t0 = time.perf_counter()
            layers = comp.compensate(model, dense, space, kept, batches)
            times[label].append(time.perf_counter() - t0)
            models[label] = model
    comp._capture = stopped_capture
    diff = max(float((a.double() - b.double()).abs().max()) for a, b in
               zip(models["full"].state_dict().values(), models["stopped"].state_dict().values(), strict=True)
               if a.is_floating_point())
    print(json.dumps({"model": args.model, "size": args.size, "batch": args.batch, "batches": args.batches,
                      "refit_layers": len(layers), "full_s": [round(t, 1) for t in times["full"]],
                      "stopped_s": [round(t, 1) for t in times["stopped"]],
                      "speedup": round(sum(times["full"]) / sum(times["stopped"]), 2),
                      "max_weight_diff": diff, "load": [round(load, 2), round(os.getloadavg()[0], 2)]}))


if __name__ == "__main__":
    main()
