"""Fixtures every test may use: the tiny shapes data in COCO and VOC layouts, few threads, and
dataset caches kept out of the project. Shared helpers live in ``tests/support.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tasks.core.resolvers import register_resolvers
from tasks.data.shapes import ShapesSpec, ensure_shapes
from tests.support import TINY_DETECTION, TINY_SHAPES, compose_config

register_resolvers()  # as the scripts do before Hydra composes a config


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A distributed test is a slow one: ``-m "not slow"`` (make test-fast) leaves both out."""
    for item in items:
        if item.get_closest_marker("distributed"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _cache_outside_the_project(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Dataset indexes of test runs go to a temporary folder, not the project's .cache."""
    os.environ["TEST_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_shapes(tmp_path_factory.mktemp("data") / "shapes", TINY_SHAPES)


@pytest.fixture(scope="session")
def shapes_voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny shapes data in VOCdevkit layout (VOC2007 + VOC2012 trainval, VOC2007 test)."""
    return ensure_shapes(tmp_path_factory.mktemp("data") / "VOCdevkit", TINY_SHAPES, layout="voc")


@pytest.fixture(scope="session")
def shapes_panoptic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny shapes over stuff landscapes in COCO panoptic layout."""
    return ensure_shapes(tmp_path_factory.mktemp("data") / "shapes_panoptic", TINY_SHAPES, layout="coco_panoptic")


# 15 training images with one or two large shapes each; the model is scored on them, which it learns
# within 120 steps (map_50 about 0.5), so that the figures tests compare are far from zero
DETECTING_SPEC = ShapesSpec(
    num_train=15, num_val=7, image_size=64, min_object_size=20, max_object_size=36, max_objects=2
)
SCORED_ON_TRAINING_IMAGES = [
    "+dataset.val_images=train2017",
    "+dataset.val_annotations=annotations/instances_train2017.json",
]
TINY_MASKS = ["task=instance_segmentation", "task.model.mask_layers=[32,32]", "task.model.mask_predictor_channels=32"]


@pytest.fixture(scope="session")
def trained_mask_rcnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], Path]:
    """A Mask R-CNN checkpoint that detects (120 steps), shared by the evaluation and int8 tests: its
    path, the overrides it was trained with (scores thresholded at 0, so that it predicts up to 100 boxes
    an image) and its data."""
    from tasks.core.runner import train  # Lightning is imported by the tests that train

    tmp = tmp_path_factory.mktemp("trained_mask_rcnn")
    spec = DETECTING_SPEC
    root = ensure_shapes(tmp / "shapes", spec)
    overrides = [
        *TINY_MASKS,
        "backbone=resnet18",
        *TINY_DETECTION,
        f"dataset.root={root}",
        *[f"dataset.{name}={getattr(spec, name)}" for name in ("num_train", "num_val", "image_size", "max_objects")],
        *[f"dataset.{name}={getattr(spec, name)}" for name in ("min_object_size", "max_object_size")],
        "dataset.batch_size=4",
        "dataset.num_workers=0",
        # 15 images on two ranks get 8 each: the sampler repeats one image
        *SCORED_ON_TRAINING_IMAGES,
        "dataset.val_batch_size=2",
        "task.model.box_score_thresh=0.0",
        "trainer.enable_progress_bar=false",
    ]
    steps = ["trainer.max_steps=120", "trainer.max_epochs=-1", "trainer.check_val_every_n_epoch=1000"]
    metrics = train(compose_config([*overrides, *steps], tmp / "train"))
    checkpoint = json.loads((tmp / "train" / "metrics.json").read_text())["checkpoint"]
    assert metrics["map_50"] > 0.3, metrics  # it detects
    return Path(checkpoint), overrides, root
