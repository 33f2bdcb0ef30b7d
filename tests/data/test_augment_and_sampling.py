"""Augmentation presets keep boxes on their objects; grouped batching keeps shapes together."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.data.augment import detection_transforms
from tasks.data.sampling import aspect_ratio_groups, group_batches, plain_batches


def _marked_image(box: list[int], shape=(300, 600)) -> np.ndarray:
    image = np.zeros((*shape, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return image


@pytest.mark.parametrize("preset", ["hflip", "scale_jitter", "multiscale", "lsj"])
def test_boxes_follow_the_object(preset: str) -> None:
    box = [100, 60, 220, 180]
    transform = detection_transforms(preset, train=True, multiscale_sizes=[150, 200], max_size=350, lsj_size=256)
    for _ in range(10):
        out = transform(image=_marked_image(box), bboxes=np.array([box], float), labels=np.array([1]), box_ids=[0])
        if len(out["bboxes"]) == 0:
            assert preset == "lsj"  # the random crop may leave the object out: box and label go together
            assert len(out["labels"]) == 0
            continue
        x1, y1, x2, y2 = np.round(out["bboxes"][0]).astype(int)
        inside = out["image"][y1:y2, x1:x2]
        assert inside.mean() > 200  # the box still covers the white object
        assert out["image"].sum() / 255 / 3 <= (x2 - x1 + 2) * (y2 - y1 + 2)  # and the object lies in the box


def test_multiscale_shorter_side_and_cap() -> None:
    transform = detection_transforms("multiscale", train=True, multiscale_sizes=[150, 200], max_size=350)
    shapes = {
        transform(image=_marked_image([0, 0, 10, 10]), bboxes=np.zeros((0, 4)), labels=np.zeros(0), box_ids=[])[
            "image"
        ].shape[:2]
        for _ in range(30)
    }
    assert shapes == {(150, 300), (175, 350)}  # 200 would make the long side 400 > 350


def test_lsj_output_is_fixed_square() -> None:
    transform = detection_transforms("lsj", train=True, lsj_size=128)
    for _ in range(5):
        out = transform(image=_marked_image([0, 0, 10, 10]), bboxes=np.zeros((0, 4)), labels=np.zeros(0), box_ids=[])
        assert out["image"].shape[:2] == (128, 128)


def test_grouped_batches_are_homogeneous_complete_and_as_many_as_plain_batches() -> None:
    ratios = [0.5 + (i % 3) for i in range(23)]  # three aspect-ratio groups
    groups = aspect_ratio_groups(ratios)
    assert len(set(groups)) == 3
    order = np.random.default_rng(0).permutation(23).tolist()
    batches = group_batches(order, groups, batch_size=4, drop_last=False)
    assert sorted(i for b in batches for i in b) == list(range(23))
    assert len(batches) == len(plain_batches(order, 4, drop_last=False)) == 6
    assert len(group_batches(order, groups, batch_size=4, drop_last=True)) == 5
    full = [b for b in batches if len(b) == 4]
    mixed = sum(len({groups[i] for i in b}) > 1 for b in full)
    assert mixed <= 1  # only the final leftovers may mix groups


def test_resize_longest_shrinks_but_never_enlarges() -> None:
    transform = detection_transforms("none", train=False, resize_longest=100)
    small = transform(
        image=np.zeros((48, 64, 3), np.uint8), bboxes=np.array([[4, 4, 20, 20]], float), labels=[1], box_ids=[0]
    )
    assert small["image"].shape == (48, 64, 3)  # albumentations' LongestMaxSize would make it 75x100
    np.testing.assert_allclose(small["bboxes"], [[4, 4, 20, 20]], atol=1e-4)
    large = transform(
        image=np.zeros((100, 200, 3), np.uint8), bboxes=np.array([[20, 10, 60, 50]], float), labels=[1], box_ids=[0]
    )
    assert large["image"].shape == (50, 100, 3)
    np.testing.assert_allclose(large["bboxes"], [[10, 5, 30, 25]], atol=1e-4)
