"""Shared fixtures: a tiny generated shapes dataset and Hydra config composition."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tasks import PROJECT_ROOT
from tasks.core.resolvers import register_resolvers
from tasks.data.shapes import ShapesSpec, ensure_shapes

register_resolvers()  # as the scripts do before Hydra composes a config
CONF_DIR = PROJECT_ROOT / "conf"
BACKBONE_CONFIGS = sorted(p.stem for p in (CONF_DIR / "backbone").glob("*.yaml"))
TINY_SHAPES = ShapesSpec(num_train=16, num_val=8, image_size=64, min_object_size=10, max_object_size=28, max_objects=3)

# Overrides that make any detection run tiny: 64 px images, few proposals, a small head.
TINY_DETECTION = [
    "task.model.min_size=64",
    "task.model.max_size=64",
    "task.model.anchor_sizes=[8,16,32,64,128]",
    "task.model.fpn_channels=32",
    "task.model.representation_size=64",
    "task.model.rpn_pre_nms_top_n_train=100",
    "task.model.rpn_post_nms_top_n_train=50",
    "task.model.rpn_pre_nms_top_n_test=100",
    "task.model.rpn_post_nms_top_n_test=50",
    "task.model.box_batch_size_per_image=16",
]


# Lightning DDP with two CPU processes (gloo): the config leaves SyncBatchNorm out by itself;
# float32 so that two processes can be compared with one.
CPU_DDP = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
]


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


def shapes_overrides(root: Path) -> list[str]:
    spec = TINY_SHAPES
    return [
        f"dataset.root={root}",
        f"dataset.num_train={spec.num_train}",
        f"dataset.num_val={spec.num_val}",
        f"dataset.image_size={spec.image_size}",
        f"dataset.min_object_size={spec.min_object_size}",
        f"dataset.max_object_size={spec.max_object_size}",
        f"dataset.max_objects={spec.max_objects}",
        "dataset.batch_size=4",
        "dataset.val_batch_size=4",
        "dataset.num_workers=0",
    ]


def _with_test_cache(args: list[str]) -> list[str]:
    if any(arg.startswith("paths.cache_dir=") for arg in args) or "TEST_CACHE_DIR" not in os.environ:
        return list(args)
    return [*args, f"paths.cache_dir={os.environ['TEST_CACHE_DIR']}"]


def run_script(
    script: str, args: list[str], *, env: dict[str, str] | None = None, threads: int = 2, cwd: Path = PROJECT_ROOT
) -> subprocess.CompletedProcess:
    """``python tasks/<script> ARGS`` (from the project root unless ``cwd`` says otherwise), as a user runs it."""
    threads = 1 if "trainer=ddp" in args else threads  # two processes share the two cores
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), **(env or {})}
    command = [sys.executable, str(PROJECT_ROOT / "tasks" / script), *_with_test_cache(args)]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)


def start_script(script: str, args: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``run_script`` in the background (one process of a multi-process launch), output to ``log``."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    command = [sys.executable, str(PROJECT_ROOT / "tasks" / script), *_with_test_cache(args)]
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=PROJECT_ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "config") -> DictConfig:
    """The config ``tasks/train.py`` (``config_name``: predict.py, export.py ...) would see, with the
    run directory pinned to ``output_dir``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        pinned = [f"paths.output_dir={output_dir}", f"paths.cache_dir={output_dir}/cache"]
        return compose(config_name, overrides=[*overrides, *pinned])


@pytest.fixture(scope="session")
def shapes_voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny shapes data in VOCdevkit layout (VOC2007 + VOC2012 trainval, VOC2007 test)."""
    return ensure_shapes(tmp_path_factory.mktemp("data") / "VOCdevkit", TINY_SHAPES, layout="voc")


# Overrides that make a segmentation run tiny: an undilated resnet18, a narrow head, 64 px crops.
TINY_SEGMENTATION = [
    "task=segmentation",
    "backbone=resnet18",
    "task.model.output_stride=null",  # ASPP on the undilated c5
    "task.model.variant=v3plus",
    "task.model.channels=32",
    "task.model.atrous_rates=[1,2,3]",
    "dataset.crop_size=64",
    "dataset.batch_size=4",
    "dataset.val_batch_size=4",
    "dataset.num_workers=0",
]


def shapes_seg_overrides(voc_root: Path) -> list[str]:
    """The tiny shapes in VOC layout: the same generation settings as ``shapes_overrides``."""
    return [f"dataset.root={voc_root}", *shapes_overrides(voc_root)[1:8]]
