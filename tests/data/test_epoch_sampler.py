"""The training order: a function of (seed, epoch), sharded over ranks, resumable at any batch,
with per-sample augmentation seeds that make the data independent of the loader's workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from tasks.common.errors import UserError
from tasks.data.augment import detection_transforms
from tasks.data.detection_dataset import collate_detection
from tasks.data.loader import check_resumable, training_loader
from tasks.data.sampling import EpochBatchSampler


def _indices(batches: list[list[tuple[int, int]]]) -> list[list[int]]:
    return [[index for index, _ in batch] for batch in batches]


@pytest.mark.parametrize("size, batch_size, ranks, drop_last", [(23, 4, 1, False), (23, 4, 3, False), (10, 3, 2, True)])
def test_shards_cover_the_data_with_equal_batch_counts(size: int, batch_size: int, ranks: int, drop_last: bool) -> None:
    samplers = [
        EpochBatchSampler(size, batch_size, seed=1, num_replicas=ranks, rank=r, drop_last=drop_last)
        for r in range(ranks)
    ]
    shards = [list(s) for s in samplers]
    assert {len(shard) for shard in shards} == {len(samplers[0])}  # every rank runs the same number of steps
    seen = [i for shard in shards for batch in _indices(shard) for i in batch]
    if not drop_last:
        assert set(seen) == set(range(size)) and len(seen) == ranks * -(-size // ranks)  # padded like DDP's
    assert all(len(batch) == batch_size for shard in shards for batch in shard[:-1])


def test_order_and_seeds_depend_on_seed_and_epoch_only() -> None:
    def epoch(seed: int, number: int) -> list:
        sampler = EpochBatchSampler(50, 5, seed=seed)
        sampler.set_epoch(number)
        return list(sampler)

    assert epoch(3, 1) == epoch(3, 1)
    assert _indices(epoch(3, 1)) != _indices(epoch(3, 2)) and _indices(epoch(3, 1)) != _indices(epoch(4, 1))
    seeds = [seed for batch in epoch(3, 1) for _, seed in batch]
    assert len(set(seeds)) == 50  # every sample its own augmentation seed
    assert {i: s for b in epoch(3, 1) for i, s in b} != {i: s for b in epoch(3, 2) for i, s in b}  # new each epoch


def test_start_skips_the_batches_already_trained_and_rolls_over_at_the_end() -> None:
    sampler = EpochBatchSampler(20, 4, seed=0, group_ids=[i % 2 for i in range(20)])
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.start(2, batches_done=3)
    assert list(sampler) == full[3:]
    sampler.start(1, batches_done=len(sampler))  # a checkpoint written after the last batch of epoch 1
    assert sampler.epoch == 2 and list(sampler) == full
    assert all(len({i % 2 for i in batch}) == 1 for batch in _indices(full)[:-1])  # grouped (leftovers last)


@pytest.mark.parametrize("done, batch_size, ranks", [(12, 8, 1), (12, 3, 2), (7, 4, 3), (0, 5, 2)])
def test_the_rest_of_an_epoch_is_the_rest_of_its_order_in_any_layout(done: int, batch_size: int, ranks: int) -> None:
    reference = EpochBatchSampler(20, 4, seed=5)
    reference.set_epoch(1)
    order = [index for batch in _indices(list(reference)) for index in batch]
    samplers = [EpochBatchSampler(20, batch_size, seed=5, num_replicas=ranks, rank=r) for r in range(ranks)]
    for sampler in samplers:
        sampler.start(1, samples_done=done)
    shards = [_indices(list(sampler)) for sampler in samplers]
    assert {len(shard) for shard in shards} == {samplers[0].batch_count(done)}  # equal step counts
    # after k batches on every rank, exactly the next k x batch x ranks samples of the order are done
    for k in range(len(shards[0]) + 1):
        trained = {i for shard in shards for batch in shard[:k] for i in batch}
        assert trained == set(order[done : samplers[0].samples_after(k, done)])


def _position(**changes) -> dict:
    saved = {"epoch": 0, "samples_done": 8, "batches_done": 2, "batch_size": 4, "world_size": 1, "seed": 0, "size": 20}
    return {**saved, "grouped": False, **changes}


def test_a_position_that_cannot_be_continued_is_refused_naming_old_and_new() -> None:
    plain = EpochBatchSampler(20, 8, seed=0, num_replicas=2)
    check_resumable(_position(), plain)  # another batch size and world size: fine
    with pytest.raises(UserError, match=r"middle of epoch 0 \(8 of 20 samples done\): seed 3 -> 0"):
        check_resumable(_position(seed=3), plain)
    with pytest.raises(UserError, match="training images 21 -> 20"):
        check_resumable(_position(size=21), plain)
    check_resumable(_position(seed=3, samples_done=20), plain)  # saved at the end of an epoch: anything goes
    grouped = EpochBatchSampler(20, 8, seed=0, num_replicas=2, group_ids=[i % 2 for i in range(20)])
    with pytest.raises(UserError, match=r"dataset.batch_size 4 -> 8, processes 1 -> 2"):
        check_resumable(_position(grouped=True), grouped)


class _Noise(Dataset):
    """Images whose content is the augmentation's random draws (a flip and a brightness change)."""

    transforms = detection_transforms("hflip", train=True)

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int):
        image = np.tile(np.arange(16, dtype=np.uint8)[None, :, None] * (index + 1), (8, 1, 3))
        out = self.transforms(image=image, bboxes=np.zeros((0, 4)), labels=np.zeros(0), box_ids=[])
        return torch.from_numpy(out["image"].copy()), {"index": index}


def _epoch_content(workers: int) -> list[tuple[list[int], torch.Tensor]]:
    loader = training_loader(_Noise(), 4, seed=7, trainer=None, num_workers=workers, collate_fn=collate_detection)
    return [([t["index"] for t in targets], torch.stack(images)) for images, targets in loader]


def test_batches_and_augmentations_do_not_depend_on_the_workers() -> None:
    alone, shared = _epoch_content(0), _epoch_content(2)
    assert [indices for indices, _ in alone] == [indices for indices, _ in shared]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(alone, shared, strict=True))
    flipped = [not torch.equal(img, img.flip(1)) and img[0, 0, 0] > img[0, -1, 0] for _, imgs in alone for img in imgs]
    assert 0 < sum(flipped) < 12  # the flip is random, not always or never applied
