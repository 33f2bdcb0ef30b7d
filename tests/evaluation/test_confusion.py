"""Confusion-matrix metrics: a hand-computed case with ignored pixels; 2 processes match 1."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tasks.evaluation.confusion import ConfusionMatrixEvaluator

MASK = torch.tensor([[0, 0, 1], [1, 2, 255]])
PREDICTION = torch.tensor([[0, 1, 1], [1, 2, 0]])  # the 255 pixel's prediction must not count


def test_hand_computed_case() -> None:
    evaluator = ConfusionMatrixEvaluator(["bg", "a", "b"])
    evaluator.update([PREDICTION], [{"mask": MASK, "image_id": 1}])
    np.testing.assert_array_equal(evaluator.matrix(), [[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    evaluation = evaluator.compute()
    metrics = evaluation.scalars
    # IoU: bg 1/(2+1-1), a 2/(2+3-2), b 1/1; class accuracy 1/2, 2/2, 1/1; pixels 4 of 5
    assert {name: row["iou"] for name, row in evaluation.per_class.items()} == pytest.approx(
        {"bg": 0.5, "a": 2 / 3, "b": 1.0}
    )
    assert metrics["miou"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert metrics["pixel_acc"] == pytest.approx(0.8)
    assert metrics["mean_class_acc"] == pytest.approx((0.5 + 1 + 1) / 3)


def test_class_neither_present_nor_predicted_is_left_out() -> None:
    evaluator = ConfusionMatrixEvaluator(["bg", "a", "b", "never"])
    evaluator.update([PREDICTION], [{"mask": MASK, "image_id": 1}])
    with pytest.warns(UserWarning, match="'never'"):
        metrics = evaluator.compute().scalars
    assert metrics["miou"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)


def _images(count: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    images = []
    for _ in range(count):
        mask = torch.randint(0, 4, (16, 20), generator=generator)
        mask[0, :5] = 255
        prediction = torch.where(torch.rand(16, 20, generator=generator) < 0.7, mask.clamp(max=3), 1)
        images.append((prediction, mask))
    return images


def _rank(rank: int, port: int, shards: list[list[int]], results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    images = _images()
    evaluator = ConfusionMatrixEvaluator(["bg", "a", "b", "c"])
    for index in shards[rank]:
        evaluator.update([images[index][0]], [{"mask": images[index][1], "image_id": index}])
    matrix = evaluator.matrix()  # summed on rank 0 only
    results[rank] = (matrix.tolist() if matrix is not None else None, evaluator.compute())
    dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_match_one_with_a_repeated_image() -> None:
    single = ConfusionMatrixEvaluator(["bg", "a", "b", "c"])
    for index, (prediction, mask) in enumerate(_images()):
        single.update([prediction], [{"mask": mask, "image_id": index}])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shards = [[0, 2, 4], [1, 3, 0]]  # as DistributedSampler pads 5 images to 6: image 0 twice
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(port, shards, results), nprocs=2, join=True)
        gathered = [results[0], results[1]]
    assert gathered[0][0] == single.matrix().tolist() and gathered[1][0] is None
    assert gathered[0][1] == gathered[1][1] == single.compute()  # rank 0's metrics reach every process
