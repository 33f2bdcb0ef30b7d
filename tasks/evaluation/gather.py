"""Collecting per-image results of every DDP process on rank 0, and sharing rank 0's answer.

The distributed sampler pads the last batches by repeating images, so results are keyed by
image id and each image counts once.
"""

from __future__ import annotations

from typing import TypeVar

import torch.distributed as dist

T = TypeVar("T")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_rank_zero() -> bool:
    return not _distributed() or dist.get_rank() == 0


def gather_by_image_id(local: dict[int, T]) -> dict[int, T] | None:
    """Every process's ``{image_id: result}`` merged on rank 0 (first one wins); None elsewhere."""
    if not _distributed():
        return dict(local)
    shards: list[dict[int, T]] | None = [{} for _ in range(dist.get_world_size())] if dist.get_rank() == 0 else None
    dist.gather_object(local, shards, dst=0)
    if shards is None:
        return None
    merged: dict[int, T] = {}
    for shard in shards:
        for image_id, result in shard.items():
            merged.setdefault(image_id, result)
    return merged


def from_rank_zero(value: T | None) -> T:
    """Rank 0's ``value`` on every process."""
    if not _distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
