"""Fixtures every test may use: the tiny shapes data in COCO and VOC layouts, few threads, and
dataset caches kept out of the project. Shared helpers live in ``tests/support.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tasks.core.resolvers import register_resolvers
from tasks.data.shapes import ensure_shapes
from tests.support import TINY_SHAPES

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
