"""The training loader: exact positions for Lightning checkpoints, seeded augmentation per sample."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from tasks.data.sampling import EpochBatchSampler, SampleKey

# (epoch, batches of that epoch already trained on), read from the trainer when a checkpoint is saved
Position = Callable[[], tuple[int, int]]


class SeededBatches(Dataset):
    """``dataset`` read a batch of ``SampleKey`` at a time; each sample's augmentation draws from its
    own seed, so it does not depend on which worker loads it or on what that worker loaded before.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, keys: Sequence[SampleKey]) -> list[Any]:
        return [self._item(index, seed) for index, seed in keys]

    def _item(self, index: int, seed: int) -> Any:
        transforms = getattr(self.dataset, "transforms", None)
        if transforms is not None:  # one generator shared by all steps: draws are not correlated
            transforms.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return self.dataset[index]


class ResumableLoader(DataLoader):
    """A DataLoader that starts each iteration where the trainer stands in the epoch.

    The position is read when the first batch is requested, after Lightning restored its loops
    from a checkpoint (Lightning may build the loader, and even its iterator, before that), so a
    resumed run continues with the batch after the last one it trained on. Lightning saves
    ``state_dict`` into checkpoints; it records the position for inspection.
    """

    def __init__(self, dataset: Dataset, sampler: EpochBatchSampler, position: Position, **options: Any) -> None:
        super().__init__(SeededBatches(dataset), batch_size=None, sampler=sampler, **options)
        self.position = position

    def __iter__(self) -> Iterator[Any]:
        return self._from_position()

    def _from_position(self) -> Iterator[Any]:
        self.sampler.start(*self.position())
        yield from super().__iter__()

    def state_dict(self) -> dict[str, int]:
        epoch, batches_done = self.position()
        return {"epoch": epoch, "batches_done": batches_done, "batches": len(self.sampler), "seed": self.sampler.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to restore: the trainer's restored loops hold the position."""


def trainer_position(trainer: Any) -> Position:
    """Where ``trainer``'s fit loop is: the epoch and the batches of it already trained on."""

    def position() -> tuple[int, int]:
        loop = trainer.fit_loop
        return loop.epoch_progress.current.processed, loop.epoch_loop.batch_progress.current.ready

    return position


def training_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    trainer: Any | None,
    group_ids: Sequence[int] | None = None,
    drop_last: bool = False,
    **options: Any,
) -> DataLoader:
    """Shuffled batches for ``trainer``'s rank, resumable mid-epoch from its checkpoints."""
    num_replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = EpochBatchSampler(
        len(dataset),
        batch_size,
        seed=seed,
        drop_last=drop_last,
        group_ids=group_ids,
        num_replicas=num_replicas,
        rank=rank,
    )
    position = trainer_position(trainer) if trainer is not None else (lambda: (sampler.epoch, 0))
    return ResumableLoader(dataset, sampler, position, **options)
