"""The training loader: exact positions for Lightning checkpoints, seeded augmentation per sample."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from tasks.common.errors import UserError
from tasks.data.augment import seed_pipeline
from tasks.data.sampling import EpochBatchSampler, SampleKey


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
            seed_pipeline(transforms, seed)
        return self.dataset[index]


class ResumableLoader(DataLoader):
    """A DataLoader that starts each iteration where the trainer stands in the epoch.

    The position is read when the first batch is requested, after Lightning restored its loops
    from a checkpoint (Lightning builds the loader, and even its iterator, before that).
    Checkpoints record it as the samples of the epoch's order already consumed over every rank
    (``state_dict``, saved by the data module), so a run resumed with another batch size or number
    of processes trains the rest of the epoch, each sample once: ``align_trainer`` renumbers
    Lightning's batch counter to the batches left in the new layout. Grouped batches resume only
    in an unchanged layout.
    """

    def __init__(
        self,
        dataset: Dataset,
        sampler: EpochBatchSampler,
        trainer: Any | None = None,
        resume: dict | None = None,
        **options: Any,
    ) -> None:
        super().__init__(SeededBatches(dataset), batch_size=None, sampler=sampler, **options)
        self.trainer = trainer
        if resume is not None:
            check_resumable(resume, sampler)
        self._resumed = resume  # a checkpoint's position, until its epoch is iterated
        self._epoch_start = (-1, 0, 0)  # (epoch, samples done, batch counter) where this epoch's iteration began
        self.seconds_waited = 0.0  # blocked waiting for the next batch (decoding, augmenting, collating)

    def _position(self) -> tuple[int, int]:
        """The trainer's epoch and the batches of it already trained on."""
        if self.trainer is None:
            return self.sampler.epoch, 0
        loop = self.trainer.fit_loop
        return loop.epoch_progress.current.processed, loop.epoch_loop.batch_progress.current.ready

    def align_trainer(self) -> None:
        """Set Lightning's batch counter, restored from the checkpoint, to the batches of this epoch
        that the new layout counts as done (its batch count less the batches left), so the epoch
        ends after the last sample. Call it once the trainer restored its loops, before the epoch
        loop starts (``on_train_start``)."""
        state = self._resumed
        if state is None or self.trainer is None:
            return
        sampler = self.sampler
        if sampler.grouped:
            left = len(sampler) - int(state["batches_done"])
        else:
            left = sampler.batch_count(int(state["samples_done"]))
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        shift = len(sampler) - left - progress.ready
        for counter in ("ready", "started", "processed", "completed"):
            setattr(progress, counter, getattr(progress, counter) + shift)
        rank_zero_info(
            f"resuming epoch {state['epoch']} after {state['samples_done']} of its {state['size']} samples "
            f"(saved with batches of {state['batch_size']} on {state['world_size']} processes; "
            f"{left} batches of {sampler.batch_size} on {sampler.num_replicas} left)"
        )

    def __iter__(self) -> Iterator[Any]:
        return self._from_position()

    def _from_position(self) -> Iterator[Any]:
        epoch, batches = self._position()
        resumed, self._resumed = self._resumed, None
        if resumed is not None and resumed["epoch"] == epoch and not self.sampler.grouped:
            self.sampler.start(epoch, samples_done=int(resumed["samples_done"]))
            self._epoch_start = (self.sampler.epoch, self.sampler.samples_done, batches)
        else:  # a fresh epoch, or grouped batches resumed in their own layout
            self.sampler.start(epoch, batches_done=batches)
            self._epoch_start = (self.sampler.epoch, 0, 0)
        batches_of_epoch = super().__iter__()
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches_of_epoch)
            except StopIteration:
                return
            self.seconds_waited += time.perf_counter() - start  # the training loop is blocked meanwhile
            yield batch

    def state_dict(self) -> dict[str, int | bool]:
        """Where training stands: the samples of the epoch's order consumed over every rank
        (grouped batches: a count only; they resume by ``batches_done``)."""
        epoch, batches = self._position()
        sampler = self.sampler
        start_epoch, start_samples, start_batches = self._epoch_start
        if start_epoch != epoch:
            start_samples, start_batches = 0, 0
        complete = batches - start_batches >= sampler.batch_count(start_samples)
        samples = sampler.size if complete else sampler.samples_after(batches - start_batches, start_samples)
        return {
            "epoch": epoch,
            "samples_done": samples,
            "batches_done": batches,
            "batch_size": sampler.batch_size,
            "world_size": sampler.num_replicas,
            "seed": sampler.seed,
            "size": sampler.size,
            "grouped": sampler.grouped,
            "repeat": repeat_key(sampler.repeat),
        }

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        """Nothing here: the data module hands a checkpoint's position to the loader it builds
        (Lightning builds the training loader before restoring its loops, so it never calls this)."""


def repeat_key(factors: np.ndarray | None) -> str | None:
    """A short fingerprint of repeat factors (None: no repeat-factor sampling)."""
    return None if factors is None else hashlib.sha1(np.round(factors, 9).tobytes()).hexdigest()[:12]


def check_resumable(state: dict[str, int | bool], sampler: EpochBatchSampler) -> None:
    """Refuse, naming old and new values, a mid-epoch resume whose rest of the epoch cannot be
    told: another seed or dataset size changes the order; grouped batches take samples out of order."""
    if int(state["samples_done"]) >= int(state["size"]):  # saved at the end of an epoch: anything goes
        return
    samples = "training images" if sampler.repeat is None else "training samples an epoch"
    fixed = [("seed", "seed", sampler.seed), (samples, "size", sampler.size)]
    if "repeat" in state:  # written since repeat-factor sampling exists
        fixed.append(
            ("repeat factors (dataset.repeat_threshold or the images' classes)", "repeat", repeat_key(sampler.repeat))
        )
    if sampler.grouped:  # grouped batches are not a prefix of the order: their layout must stay too
        fixed += [
            ("dataset.batch_size", "batch_size", sampler.batch_size),
            ("processes", "world_size", sampler.num_replicas),
        ]
    changed = [f"{name} {state[key]} -> {now}" for name, key, now in fixed if state[key] != now]
    if changed:
        raise UserError(
            f"cannot resume in the middle of epoch {state['epoch']} ({state['samples_done']} of {state['size']} "
            f"samples done): {', '.join(changed)} since the checkpoint. The rest of the epoch is defined by the "
            "seed and the image list (and, with dataset.group_aspect_ratio=true, by the batch size and number of "
            "processes): resume with the checkpoint's values, or from a checkpoint written at the end of an epoch"
        )


def training_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    trainer: Any | None,
    group_ids: Sequence[int] | None = None,
    repeat: Sequence[float] | None = None,
    drop_last: bool = False,
    resume: dict | None = None,
    **options: Any,
) -> ResumableLoader:
    """Shuffled batches for ``trainer``'s rank, resumable mid-epoch from its checkpoints; ``resume``:
    a checkpoint's position (``ResumableLoader.state_dict``) to continue from."""
    num_replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = EpochBatchSampler(
        len(dataset),
        batch_size,
        seed=seed,
        drop_last=drop_last,
        group_ids=group_ids,
        repeat=repeat,
        num_replicas=num_replicas,
        rank=rank,
    )
    return ResumableLoader(dataset, sampler, trainer, resume, **options)
