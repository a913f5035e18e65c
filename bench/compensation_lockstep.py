"""Compensation in lockstep against a forward per layer, on any zoo model: the same weights bit for bit (and the
same refit layers in the same order), and the time each took.

Each model (random weights) is pruned to about 60% of each group's channels and compensated twice from the same
copy, on the same random calibration batches: once as the product does (the batches' forwards in lockstep), once
with the lockstep turned off (a forward per refit layer and batch, stopped at it). One line per model::

    OMP_NUM_THREADS=1 python bench/compensation_lockstep.py timm:efficientnet_b0 torchvision:googlenet \\
        torchvision:mobilenet_v3_small timm:convnext_atto torchvision:densenet121
"""

from __future__ import annotations

import argparse
import time

import torch

from itcp_deploy.models import create_model
from itcp_deploy.pruning import apply_widths, build_space, channel_importance
from itcp_deploy.pruning import compensate as comp
from itcp_deploy.pruning.compensate import CompensationSettings, compensate, kept_channels


def compare(spec: str, size: int, batch: int, batches: int) -> str:
    torch.manual_seed(0)
    dense = create_model(spec, num_classes=10).eval()
    space = build_space(dense, (1, 3, size, size), model_spec=spec)
    widths = {g.name: g.candidates[max(0, int(len(g.candidates) * 0.6) - 1)] for g in space.prunable}
    importance = channel_importance(dense, space, "l1")
    g = torch.Generator().manual_seed(1)
    calib = [(torch.randn(batch, 3, size, size, generator=g), None) for _ in range(batches)]
    runs = []
    lockstep = comp._refit_in_lockstep
    for on in (True, False):
        comp._refit_in_lockstep = lockstep if on else (lambda *a: None)
        pruned = apply_widths(dense, space, widths, importance=importance).eval()
        t0 = time.perf_counter()
        refit = compensate(pruned, dense, space, kept_channels(dense, space, widths, importance), calib,
                           CompensationSettings(num_batches=batches))
        runs.append((pruned.state_dict(), refit, time.perf_counter() - t0))
    comp._refit_in_lockstep = lockstep
    (a, refit_a, t_a), (b, refit_b, t_b) = runs
    same = all(torch.equal(v, b[k]) for k, v in a.items())
    return (f"{spec}: {len(refit_a)} refit layers, identical weights {same}, same layers in order "
            f"{refit_a == refit_b}, lockstep {t_a:.1f} s, per layer {t_b:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for spec in args.models:
        print(compare(spec, args.size, args.batch, args.batches), flush=True)


if __name__ == "__main__":
    main()
