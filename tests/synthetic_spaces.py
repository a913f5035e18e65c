"""Pruning spaces and latency ground truths built by hand, in pure Python, for solver and perf-model tests.

``resnet_space(n)`` mirrors a CIFAR ResNet-(6n+2) as ``pruning.build_space`` describes it: one group per stage
(tied by the residual adds), one inner group per block, a 1x1 stride-2 shortcut conv per downsampling block.
"""

from __future__ import annotations

import math

import numpy as np

from itcp_deploy.space import CandidateGrid, ChannelGroup, LayerSpec, PruningSpace


def resnet_space(blocks_per_stage: int, grid: CandidateGrid | None = None) -> PruningSpace:
    grid = grid or CandidateGrid()
    layers: list[LayerSpec] = [
        LayerSpec("conv1", "conv", "input", "conv1", 3, 16, (3, 3), (1, 1), (1, 1), 1, (32, 32), (32, 32))
    ]
    widths = {"input": 3, "conv1": 16}
    stage, hw = "conv1", 32
    for s, width in enumerate((16, 32, 64), start=1):
        for i in range(blocks_per_stage):
            name = f"layer{s}.{i}"
            down = i == 0 and s > 1
            out_hw = hw // 2 if down else hw
            new_stage = f"{name}.conv2" if down else stage
            widths[f"{name}.conv1"] = width
            widths[new_stage] = width
            layers.append(
                LayerSpec(
                    f"{name}.conv1",
                    "conv",
                    stage,
                    f"{name}.conv1",
                    widths[stage],
                    width,
                    (3, 3),
                    (2, 2) if down else (1, 1),
                    (1, 1),
                    1,
                    (hw, hw),
                    (out_hw, out_hw),
                )
            )
            layers.append(
                LayerSpec(
                    f"{name}.conv2",
                    "conv",
                    f"{name}.conv1",
                    new_stage,
                    width,
                    width,
                    (3, 3),
                    (1, 1),
                    (1, 1),
                    1,
                    (out_hw, out_hw),
                    (out_hw, out_hw),
                )
            )
            if down:
                layers.append(
                    LayerSpec(
                        f"{name}.shortcut",
                        "conv",
                        stage,
                        new_stage,
                        widths[stage],
                        width,
                        (1, 1),
                        (2, 2),
                        (0, 0),
                        1,
                        (hw, hw),
                        (out_hw, out_hw),
                    )
                )
            stage, hw = new_stage, out_hw
    layers.append(LayerSpec("linear", "linear", stage, "output", 64, 10))
    widths["output"] = 10
    groups = []
    for g, full in widths.items():
        fixed = g in ("input", "output")
        groups.append(
            ChannelGroup(
                g,
                full,
                (full,) if fixed else grid.candidates(full),
                tuple(la.name for la in layers if la.out_group == g),
                tuple(la.name for la in layers if la.in_group == g),
                fixed,
            )
        )
    return PruningSpace(
        f"cifar_resnet{6 * blocks_per_stage + 2}", (1, 3, 32, 32), tuple(groups), tuple(layers), grid
    )


def staircase_ms(layer: LayerSpec, w_in: int, w_out: int, tile: int = 8) -> float:
    """A ground-truth layer latency with a tile staircase in both widths (not proportional to MACs)."""
    cin = 1 if layer.depthwise else math.ceil(w_in / tile) * tile
    cout = math.ceil(w_out / tile) * tile
    work = layer.kernel[0] * layer.kernel[1] * cin * cout * layer.out_hw[0] * layer.out_hw[1]
    return 0.004 + 2.0e-8 * work + 1.5e-6 * cout * layer.out_hw[0] * layer.out_hw[1]


def staircase_tables(space: PruningSpace) -> dict[str, np.ndarray]:
    """:func:`staircase_ms` of every layer over its groups' candidate widths (what a fitted perf model holds)."""
    tables = {}
    for layer in space.layers:
        cin, cout = space.group(layer.in_group).candidates, space.group(layer.out_group).candidates
        tables[layer.name] = np.array([[staircase_ms(layer, a, b) for b in cout] for a in cin])
    return tables


def random_scores(space: PruningSpace, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.name: np.cumsum(rng.random(len(g.candidates))) * rng.uniform(0.2, 2.0) for g in space.prunable}


def random_widths(space: PruningSpace, rng: np.random.Generator) -> dict[str, int]:
    return {g.name: int(rng.choice(g.candidates)) for g in space.prunable}


def synthetic_profile(
    space: PruningSpace,
    *,
    n_design: int = 40,
    n_holdout: int = 15,
    noise: float = 0.01,
    seed: int = 0,
    garbage: bool = False,
):
    """A profile from a known additive ground truth: per-layer times overestimate the network by 40% (as
    isolated-layer engines do), whole-network times carry ``noise`` relative jitter. ``garbage``: totals
    unrelated to the widths."""
    from itcp_deploy.profiling.records import EngineMeasurement, LatencyStats, Profile

    rng = np.random.default_rng(seed)

    def engine(i: int, widths: dict[str, int], role: str) -> EngineMeasurement:
        w = space.complete(widths)
        true = {la.name: staircase_ms(la, w[la.in_group], w[la.out_group]) for la in space.layers}
        total = 0.05 + sum(true.values())
        total = rng.uniform(0.5, 5.0) if garbage else total * (1 + noise * rng.standard_normal())
        layer_ms = {k: 1.4 * v * (1 + 2 * noise * rng.standard_normal()) for k, v in true.items()}
        stats = LatencyStats(total, total, total, total, total, 0.0, 100)
        return EngineMeasurement(f"e{i}", w, role, stats, layer_ms)

    engines = [engine(0, {}, "dense")]
    engines += [engine(i + 1, random_widths(space, rng), "design") for i in range(n_design)]
    engines += [engine(i + 1 + n_design, random_widths(space, rng), "holdout") for i in range(n_holdout)]
    return Profile(
        space.model,
        space.input_shape,
        "synthetic",
        "0",
        "fp32",
        "cpu",
        space,
        engines,
        layer_source="isolated",
        noise_pct=100 * noise,
    )
