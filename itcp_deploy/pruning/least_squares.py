"""One layer's least-squares refit (:mod:`~itcp_deploy.pruning.compensate` chooses the layers and feeds them):
its rows (im2col for a conv) and the dense outputs they must give, on a fixed subset of each image's output
positions, and the ridge regression solved from the rows' Gram matrix or, with fewer rows than unknowns, from
their kernel matrix."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROW_BYTES = 1 << 28
"""The float64 rows one Gram update holds: a batch is taken a few images at a time (VGG-16's second conv at 224
has 232 MB of rows an image, by arithmetic: 15 GB for a 64-image batch taken whole)."""


def positions(per_image: torch.Tensor, limit: int) -> torch.Tensor:
    """``per_image`` (N x positions x features) at most ``limit`` positions an image: a fixed, seeded subset
    of them, the same for a layer's inputs and its dense outputs (both have the layer's output positions). A
    regression of a few thousand unknowns needs no million rows: a 256-channel conv on 128x128 maps (RetinaNet's
    first stage at 512) holds 1 GiB of dense outputs over 64 images, by arithmetic. Fewer rows cost accuracy:
    ResNet-56's one-shot top-1 held at 64 positions an image and fell 8 points at 16 (docs/benchmarks.md,
    section 25)."""
    count = per_image.shape[1]
    if count <= limit:
        return per_image
    chosen = torch.randperm(count, generator=torch.Generator().manual_seed(count))[:limit].sort().values
    return per_image[:, chosen]


def layer_rows(layer: nn.Conv2d | nn.Linear, x: torch.Tensor, limit: int) -> torch.Tensor:
    """The layer's input as one row per output position (im2col for convs; at most ``limit`` positions an
    image, :func:`positions`), float64."""
    if isinstance(layer, nn.Linear):
        per_image = x.reshape(x.shape[0], -1, x.shape[-1])
    else:
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,  # type: ignore[arg-type]
                        stride=layer.stride)
        per_image = cols.transpose(1, 2)
    return positions(per_image, limit).reshape(-1, per_image.shape[-1]).double()


def positions_of(layer: nn.Conv2d | nn.Linear, x: torch.Tensor) -> int:
    """The output positions an image of input ``x`` gives ``layer`` (tokens for a linear layer)."""
    if isinstance(layer, nn.Linear):
        return int(np.prod(x.shape[1:-1]))
    sizes = [(n + 2 * p - d * (k - 1) - 1) // st + 1 for n, p, d, k, st in zip(
        x.shape[2:], layer.padding, layer.dilation, layer.kernel_size, layer.stride, strict=True)]  # type: ignore[arg-type]
    return int(np.prod(sizes))


def dense_rows(layer: nn.Conv2d | nn.Linear, y: torch.Tensor, kept: np.ndarray, limit: int) -> torch.Tensor:
    """Dense outputs on the kept channels, one row per output position (at most ``limit`` an image, the
    positions :func:`layer_rows` takes), float32 (a copy: an in-place op after the layer cannot change it). A linear
    layer's channels are its last dimension, whatever comes before (tokens: a Swin or ConvNeXt MLP reads N x H
    x W x C)."""
    if isinstance(layer, nn.Linear):
        per_image = y.reshape(y.shape[0], -1, y.shape[-1])[..., torch.as_tensor(kept)]
    else:
        y = y[:, torch.as_tensor(kept)]
        per_image = y.permute(0, *range(2, y.dim()), 1).reshape(y.shape[0], -1, y.shape[1])
    return positions(per_image, limit).reshape(-1, per_image.shape[-1]).float()


def refit_layer(layer: nn.Conv2d | nn.Linear, inputs: list[torch.Tensor], targets: list[torch.Tensor],
                ridge: float, limit: int) -> None:
    """Solve ``layer``'s ridge regression from its pruned ``inputs`` to the dense ``targets`` (:func:`dense_rows`,
    per batch; at most ``limit`` positions an image) and write the solution into it."""
    bias = layer.bias
    w0 = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
    if bias is not None:
        w0 = torch.cat([w0, bias.detach().double()[:, None]], dim=1)
    blocks = _row_blocks(layer, inputs, targets, limit)
    few_rows = sum(len(y) for y in targets) < w0.shape[1]
    solved = (_solve_dual if few_rows else _solve_primal)(blocks, w0, ridge)
    with torch.no_grad():
        if bias is not None:
            bias.copy_(solved[:, -1].to(bias.dtype))
            solved = solved[:, :-1]
        layer.weight.copy_(solved.reshape(layer.weight.shape).to(layer.weight.dtype))


def _row_blocks(layer: nn.Conv2d | nn.Linear, inputs: list[torch.Tensor], targets: list[torch.Tensor],
                limit: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The regression's rows (a ones column for a bias) and their dense targets, float64, a few images at a
    time: at most :data:`ROW_BYTES` of rows, counted before the position subset (what the unfold holds)."""
    unknowns = layer.weight[0].numel() + (layer.bias is not None)
    for x, y in zip(inputs, targets, strict=True):
        per_image = y.shape[0] // x.shape[0]  # rows are image-major, for convs and token linears alike
        step = max(1, ROW_BYTES // (max(per_image, positions_of(layer, x)) * unknowns * 8))
        for i in range(0, x.shape[0], step):
            rows = layer_rows(layer, x[i:i + step], limit)
            if layer.bias is not None:
                rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)], dim=1)
            yield rows, y[i * per_image:(i + step) * per_image].double()


def _solve_primal(blocks: Iterable[tuple[torch.Tensor, torch.Tensor]], w0: torch.Tensor, ridge: float) -> torch.Tensor:
    """``argmin ||X W^T - Y||^2 + lam ||W - W0||^2`` from the Gram matrix ``X^T X`` (unknowns x unknowns),
    summed block by block; ``lam`` = ``ridge`` x its mean diagonal."""
    gram = torch.zeros(w0.shape[1], w0.shape[1], dtype=torch.float64)
    cross = torch.zeros(w0.shape[1], w0.shape[0], dtype=torch.float64)
    for rows, y in blocks:
        gram += rows.T @ rows
        cross += rows.T @ y
    lam = ridge * float(torch.diagonal(gram).mean()) + 1e-12
    gram.diagonal().add_(lam)
    return torch.linalg.solve(gram, cross.add_(lam * w0.T)).T


def _solve_dual(blocks: Iterable[tuple[torch.Tensor, torch.Tensor]], w0: torch.Tensor, ridge: float) -> torch.Tensor:
    """The same ridge solution from the rows' kernel ``X X^T`` (rows x rows), for fewer rows than unknowns:
    ``W^T = W0^T + X^T (X X^T + lam I)^-1 (Y - X W0^T)``. VGG's first classifier layer has 25,089 unknowns and a
    row an image: its Gram matrix took 5 GB, and VGG-11's compensation 18.5 GB at its peak with the solve's
    copies (killed for memory beside another process on a 24 GB machine; docs/benchmarks.md, section 25)."""
    pairs = list(blocks)
    x = torch.cat([rows for rows, _ in pairs])
    residual = torch.cat([y for _, y in pairs]) - x @ w0.T
    lam = ridge * float((x * x).sum()) / x.shape[1] + 1e-12
    kernel = x @ x.T
    kernel.diagonal().add_(lam)
    return (w0.T + x.T @ torch.linalg.solve(kernel, residual)).T


__all__ = ["ROW_BYTES", "dense_rows", "layer_rows", "positions", "positions_of", "refit_layer"]
