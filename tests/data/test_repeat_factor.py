"""Repeat-factor sampling (LVIS): factors by the published rule, fixed-length epochs, DDP shards and
exact mid-epoch resume with repeated images."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from tasks.common.errors import UserError
from tasks.data.builtin import ShapesDataModule
from tasks.data.loader import check_resumable, repeat_key
from tasks.data.sampling import (
    EpochBatchSampler,
    inclusion_probabilities,
    repeat_factors,
    repeated_order,
    systematic_sample,
)
from tests.support import TINY_SHAPES

# 10 images: class 1 in all of them, class 2 in two, class 3 in one, image 9 without objects
CLASSES = [(1,), (1,), (1,), (1,), (1,), (1,), (1, 2), (1, 2), (1, 3), ()]


def test_factors_follow_lvis_rule() -> None:
    factors = repeat_factors(CLASSES, threshold=0.5)
    # f(1) = 1 -> r 1; f(2) = 0.2 -> sqrt(0.5 / 0.2); f(3) = 0.1 -> sqrt(5); an image takes its largest
    expected = [1, 1, 1, 1, 1, 1, math.sqrt(2.5), math.sqrt(2.5), math.sqrt(5), 1]
    np.testing.assert_allclose(factors, expected)
    np.testing.assert_allclose(repeat_factors(CLASSES, threshold=0.05), np.ones(10))  # no class that rare


def _keys(sampler: EpochBatchSampler) -> list[tuple[int, int]]:
    return [key for batch in sampler for key in batch]


def test_every_epoch_has_the_same_length_and_repeats_rare_images() -> None:
    factors = repeat_factors(CLASSES, threshold=0.5)
    sampler = EpochBatchSampler(10, 4, seed=3, repeat=factors)
    assert sampler.size == round(factors.sum()) == 12  # 7 + 2 x 1.58 + 2.24 = 12.4
    totals = Counter()
    for epoch in range(200):
        sampler.start(epoch)
        keys = _keys(sampler)
        counts = Counter(index for index, _ in keys)
        assert len(keys) == 12 and all(math.floor(f) <= counts[i] <= math.ceil(f) for i, f in enumerate(factors))
        assert len({seed for _, seed in keys}) == 12  # a repeated image is augmented anew each time
        totals.update(counts)
    # on average: floor(r) times, plus the epoch's one extra sample drawn by the fractional parts
    fractions = factors - np.floor(factors)
    expected = np.floor(factors) + (12 - np.floor(factors).sum()) * fractions / fractions.sum()
    for index in range(10):
        assert totals[index] / 200 == pytest.approx(expected[index], abs=0.08)


def test_each_image_is_drawn_its_repeat_factor_times_on_average() -> None:
    """100 images at r = 1.9 and 900 at r = 1.1: 1180 samples an epoch, each image r times on average."""
    factors = np.array([1.9] * 100 + [1.1] * 900)
    totals = np.zeros(1000)
    epochs = 2000
    for epoch in range(epochs):
        order = repeated_order(factors, np.random.default_rng([0, epoch]))  # as the sampler draws an epoch
        assert len(order) == 1180
        totals += np.bincount(order, minlength=1000)
    means = totals / epochs
    assert means[:100].mean() == pytest.approx(1.9, rel=0.01) and means[100:].mean() == pytest.approx(1.1, rel=0.01)
    assert means.min() >= 1 and means.max() <= 2


def test_a_systematic_sample_keeps_each_inclusion_probability_and_never_repeats() -> None:
    weights = np.array([0.95, 0.6, 0.05, 0.0, 0.2])  # 2 of them: 0.95 scales past 1 and is capped
    np.testing.assert_allclose(inclusion_probabilities(weights, 2), [1.0, 0.6 / 0.85, 0.05 / 0.85, 0.0, 0.2 / 0.85])
    rng, counts = np.random.default_rng(0), np.zeros(5)
    for _ in range(8000):
        chosen = systematic_sample(weights, 2, rng)
        assert len(set(chosen.tolist())) == 2
        counts[chosen] += 1
    np.testing.assert_allclose(counts / 8000, inclusion_probabilities(weights, 2), atol=0.015)


@pytest.mark.parametrize("done, batch_size, ranks", [(6, 4, 2), (5, 3, 1), (0, 2, 3)])
def test_ranks_and_a_resumed_layout_cover_the_rest_of_the_order_once(done: int, batch_size: int, ranks: int) -> None:
    factors = repeat_factors(CLASSES, threshold=0.5)
    reference = EpochBatchSampler(10, 4, seed=3, repeat=factors)
    reference.start(2)
    order = _keys(reference)
    samplers = [
        EpochBatchSampler(10, batch_size, seed=3, repeat=factors, num_replicas=ranks, rank=r) for r in range(ranks)
    ]
    for sampler in samplers:
        sampler.start(2, samples_done=done)
    trained = Counter(key for sampler in samplers for key in _keys(sampler))
    padding = ranks * math.ceil((12 - done) / ranks) - (12 - done)  # DistributedSampler's repeated tail
    assert sum(trained.values()) == 12 - done + padding
    assert set(trained) == set(order[done:])  # the rest of the order, its augmentation seeds included


def test_changed_factors_refuse_a_mid_epoch_resume() -> None:
    factors = repeat_factors(CLASSES, threshold=0.5)
    sampler = EpochBatchSampler(10, 4, seed=3, repeat=factors)
    saved = {"epoch": 0, "samples_done": 4, "batches_done": 1, "batch_size": 4, "world_size": 1, "seed": 3,
             "size": 12, "grouped": False, "repeat": repeat_key(factors)}  # fmt: skip
    check_resumable(saved, sampler)
    other = EpochBatchSampler(10, 4, seed=3, repeat=repeat_factors(CLASSES, threshold=0.45))
    assert other.size == 12  # the same epoch length, other factors
    with pytest.raises(UserError, match="repeat factors"):
        check_resumable(saved, other)


def test_the_data_module_repeats_images_of_rare_classes(shapes_root) -> None:
    options = {"num_train": TINY_SHAPES.num_train, "num_val": TINY_SHAPES.num_val, "image_size": 64,
               "min_object_size": 10, "max_object_size": 28, "max_objects": 3}  # fmt: skip
    datamodule = ShapesDataModule(shapes_root, **options, num_workers=0, batch_size=4, repeat_threshold=0.9)
    datamodule.setup()
    factors = repeat_factors(datamodule.train_set.item_classes(), 0.9)
    assert factors.max() > 1  # some shape is in fewer than 90% of the images
    loader = datamodule.train_dataloader()
    assert loader.sampler.size == round(factors.sum()) and len(loader) == math.ceil(round(factors.sum()) / 4)
    seen = Counter(target["image_id"] for _, targets in loader for target in targets)
    assert sum(seen.values()) == round(factors.sum())
