"""Aspect-ratio grouped batching: batches of similarly shaped images pad little."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import BatchSampler, Sampler


def aspect_ratio_groups(aspect_ratios: Sequence[float], bins_per_side: int = 3) -> list[int]:
    """Group index per image from width/height, on log-spaced bins between 1/2 and 2."""
    bins = 2 ** np.linspace(-1, 1, 2 * bins_per_side + 1)
    return np.digitize(np.asarray(aspect_ratios, dtype=float), bins).tolist()


class GroupedBatchSampler(BatchSampler):
    """Fills one batch per group from ``sampler``'s order; leftovers are batched together at the end.

    It yields as many batches as a plain ``BatchSampler`` over the same sampler, so every
    DDP rank (each with its own shard, since Lightning swaps ``sampler`` for a distributed
    one) runs the same number of steps.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int, drop_last: bool = False):
        super().__init__(sampler, batch_size, drop_last)
        self.group_ids = list(group_ids)

    def __iter__(self) -> Iterator[list[int]]:
        pending: dict[int, list[int]] = defaultdict(list)
        for index in self.sampler:
            group = pending[self.group_ids[index]]
            group.append(index)
            if len(group) == self.batch_size:
                yield group.copy()
                group.clear()
        leftovers = [index for group in pending.values() for index in group]
        for start in range(0, len(leftovers), self.batch_size):
            batch = leftovers[start : start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch
