"""DataLoaders and seeded subsets.

Shuffling uses a generator seeded from ``seed``, so the same seed gives the same order on any machine.
Under ``torch.distributed`` the loader shards the data: a ``DistributedSampler`` for training (same
``seed``), a padding-free strided shard for evaluation so every sample is counted once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset

from itcp_deploy.data.detection import collate_detection
from itcp_deploy.data.info import DatasetInfo
from itcp_deploy.errors import UsageError


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: each sample on exactly one rank, no padding duplicates."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def seeded_indices(length: int, count: int, seed: int) -> list[int]:
    """``count`` distinct indices of ``range(length)`` drawn with ``seed`` (all, shuffled, if fewer)."""
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed))
    return order[: min(count, length)].tolist()


def seeded_subset(info: DatasetInfo, count: int, seed: int) -> DatasetInfo:
    """``count`` samples of ``info`` drawn with ``seed``: e.g. the calibration images for pruning scores."""
    if count < 1:
        raise UsageError(f"a subset needs at least one sample, got {count}", "pass a positive sample count")
    indices = seeded_indices(len(info.dataset), count, seed)
    name = f"{info.name}[{len(indices)}@seed{seed}]"
    return replace(info, dataset=Subset(info.dataset, indices), name=name)


def make_loader(
    info: DatasetInfo,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    max_samples: int | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over ``info`` (or ``max_samples`` of it drawn with ``seed``), sharded under DDP.

    Args:
        info: from :func:`~itcp_deploy.data.load_dataset`.
        batch_size: samples per batch (per process under DDP).
        shuffle: a new seeded order; pass a different ``seed`` per epoch for a different order.
        seed: seeds the order and the subset. Defaults to 0.
        max_samples: use only this many samples (a seeded subset). Defaults to all.
        num_workers: loader processes. Defaults to 0 (in-process; the data is small or already in memory).
        drop_last: drop a final partial batch (training with BatchNorm dislikes a batch of one).
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}", "pass e.g. --batch-size 128")
    dataset = info.dataset if max_samples is None else seeded_subset(info, max_samples, seed).dataset
    generator = torch.Generator().manual_seed(seed)
    sampler: Sampler[int] | None = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if shuffle:
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                         drop_last=drop_last)
        else:
            sampler = ShardSampler(len(dataset), rank, world)
        shuffle = False
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, generator=generator,
                      collate_fn=collate_detection if info.task == "detection" else None,  # a list of targets
                      num_workers=num_workers, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False)
