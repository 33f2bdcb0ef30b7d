"""What the tests share: tiny configs and data, config composition, running the commands as a user
does, hand-made COCO folders and the pycocotools reference, image files, and the callbacks tests
inject into real runs (``+callbacks.NAME._target_=tests.support.X``)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks import PROJECT_ROOT
from tasks.data.shapes import ShapesSpec

EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how a stored image is turned

CONF_DIR = PROJECT_ROOT / "conf"


BACKBONE_CONFIGS = sorted(p.stem for p in (CONF_DIR / "backbone").glob("*.yaml"))
# backbones of 60 M parameters or more take seconds to build: their cases run in the slow tier
HEAVY_BACKBONES = {"resnet152", "resnext101_32x8d", "wide_resnet50_2"}
BACKBONES = [
    pytest.param(name, marks=pytest.mark.slow) if name in HEAVY_BACKBONES else name for name in BACKBONE_CONFIGS
]


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

# the options of TINY_DETECTION only the two-stage detectors take (a one-stage model refuses them typed)
TWO_STAGE_ONLY = ("task.model.rpn_", "task.model.box_batch_size_per_image", "task.model.representation_size")


def tiny_detection_for(model: str) -> list[str]:
    """TINY_DETECTION with ``model=NAME``, without the RPN and box-head options where it has none."""
    if model in ("faster_rcnn", "mask_rcnn"):
        return [f"model={model}", *TINY_DETECTION]
    return [f"model={model}", *(o for o in TINY_DETECTION if not o.startswith(TWO_STAGE_ONLY))]


# Panoptic FPN made tiny: TINY_DETECTION's Mask R-CNN with narrow mask and semantic heads, and every
# instance and stuff region merged (an untrained model's scores are low, its regions small)
TINY_PANOPTIC = [
    "task=panoptic_segmentation",
    *TINY_DETECTION,
    "task.model.mask_layers=[16]",
    "task.model.mask_predictor_channels=16",
    "task.model.semantic_channels=16",
    "task.model.score_threshold=0.05",
    "task.model.stuff_area_threshold=8",
]


# Lightning DDP with two CPU processes (gloo): the config leaves SyncBatchNorm out by itself;
# float32 so that two processes can be compared with one.
CPU_DDP = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
]


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

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "config") -> DictConfig:
    """The config ``tasks/train.py`` (``config_name``: predict.py, export.py ...) would see, with the
    run directory pinned to ``output_dir``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        pinned = [f"paths.output_dir={output_dir}", f"paths.cache_dir={output_dir}/cache"]
        return compose(config_name, overrides=[*overrides, *pinned])


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


# the tiny shapes (32 px) in class folders: a classification run of a few steps
TINY_CLASSIFICATION = [
    "task=classification",
    f"dataset.num_train={TINY_SHAPES.num_train}",
    f"dataset.num_val={TINY_SHAPES.num_val}",
    "dataset.image_size=32",
    "dataset.min_object_size=8",
    "dataset.max_object_size=24",
    "dataset.crop_size=32",
    "dataset.val_resize=32",
    "dataset.batch_size=4",
    "dataset.val_batch_size=4",
    "trainer.enable_progress_bar=false",
]


def shapes_seg_overrides(voc_root: Path) -> list[str]:
    """The tiny shapes in VOC layout: the same generation settings as ``shapes_overrides``."""
    return [f"dataset.root={voc_root}", *shapes_overrides(voc_root)[1:8]]


CATEGORY_IDS = [3, 7, 90]  # non-contiguous, as in COCO


def write_coco_folder(root: Path, images: list[dict], annotations: list[dict], split: str = "val2017") -> Path:
    """``images`` rows need id, width, height; files are written as noise PNGs."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for image in images:
        image.setdefault("file_name", f"{image['id']:012d}.png")
        pixels = rng.integers(0, 255, (image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / image["file_name"])
    for i, ann in enumerate(annotations, start=1):
        ann.setdefault("id", i)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    content = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS],
    }
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(content))
    return path


def pycocotools_stats(coco_gt: COCO, rows: list[dict], iou_type: str = "bbox") -> list[float]:
    """The 12 summary stats of pycocotools' own COCOeval on ``rows`` (the reference the project is held to)."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(rows), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return list(evaluation.stats)


def jpeg_file(path: Path, size: tuple[int, int] = (64, 48), orientation: int | None = None) -> Path:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    exif = Image.Exif()
    if orientation:
        exif[EXIF_ORIENTATION] = orientation
    image.save(path, quality=90, exif=exif)
    return path


def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    return path


def random_ground_truth(rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    images, annotations = [], []
    for image_id in range(1, 13):
        width, height = int(rng.integers(60, 200)), int(rng.integers(60, 200))
        images.append({"id": image_id * 7, "width": width, "height": height})
        for _ in range(rng.integers(0, 4)):
            w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            annotations.append(
                {"image_id": image_id * 7, "category_id": int(rng.choice(CATEGORY_IDS)), "bbox": [x, y, w, h]}
            )
    return images, annotations


def random_predictions(rng: np.random.Generator, images: list[dict], annotations: list[dict]) -> list[dict]:
    """Jittered true boxes (sometimes with the wrong class) plus random false positives, in COCO results format."""
    rows = []
    for ann in annotations:
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        category = ann["category_id"] if rng.random() < 0.8 else int(rng.choice(CATEGORY_IDS))
        rows.append(
            {
                "image_id": ann["image_id"],
                "category_id": category,
                "bbox": list(np.array([x, y, w, h]) + jitter),
                "score": float(rng.random()),
            }
        )
    for image in images:
        for _ in range(rng.integers(0, 3)):
            w, h = rng.uniform(4, 30, 2)
            rows.append(
                {
                    "image_id": image["id"],
                    "category_id": int(rng.choice(CATEGORY_IDS)),
                    "bbox": [rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h), w, h],
                    "score": float(rng.random()),
                }
            )
    return rows


def backbone_from_yaml(name: str, **overrides):
    cfg = OmegaConf.load(CONF_DIR / "backbone" / f"{name}.yaml")
    return instantiate(OmegaConf.merge(cfg, overrides))


class SpoilWeightsAfterResume(L.Callback):
    """On a resumed run only, add large noise to every weight: validations after the resume are
    then far worse than those before, as when a run diverges after an interruption."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.global_step == 0:
            return
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 3)


class NanBoxLossOnRank(L.Callback):
    """On one DDP process only, make torchvision's box regression loss NaN on training call ``call``
    (1-based), as when one process meets a bad batch."""

    def __init__(self, rank: int, call: int) -> None:
        self.rank, self.call = rank, call

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.global_rank != self.rank:
            return
        import torchvision.models.detection.roi_heads as roi_heads

        original, count, call = roi_heads.fastrcnn_loss, [0], self.call

        def loss(*args, **kwargs):
            classifier, box = original(*args, **kwargs)
            if torch.is_grad_enabled():
                count[0] += 1
                box = box * float("nan") if count[0] == call else box
            return classifier, box

        roi_heads.fastrcnn_loss = loss


class Crash(RuntimeError):
    """A run stopped from inside, as a crash would stop it."""


class CrashAtStep(L.Callback):
    """Raises ``Crash`` once ``step`` optimizer steps are done, after the checkpoint callbacks of
    that step ran (an in-process stand-in for ``KillAtStep``)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise Crash(f"stopped after step {self.step}")


class RecordTrainedImages(L.Callback):
    """Appends, after every training batch, the epoch, the optimizer step reached and the batch's
    image ids to ``trained_rank<R>.jsonl`` in the run directory: which images a run trained on."""

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        import json
        from pathlib import Path

        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, "ids": [t["image_id"] for t in batch[1]]}
        with (Path(trainer.default_root_dir) / f"trained_rank{trainer.global_rank}.jsonl").open("a") as file:
            file.write(json.dumps(row) + "\n")


def _state(module: L.LightningModule) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


class StateAroundBatch(L.Callback):
    """Saves every parameter and buffer from before and after training batch ``batch`` (0-based) to
    ``around_bad_batch.pt`` in the run directory; ``inf_activation``: also make the network's first
    convolution output inf on that batch, as an overflowing activation would."""

    def __init__(self, batch: int, inf_activation: bool = False) -> None:
        self.batch, self.inf_activation = batch, inf_activation
        self.before: dict[str, torch.Tensor] = {}
        self.hook = None

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx != self.batch:
            return
        self.before = _state(module)
        if self.inf_activation:
            first = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
            self.hook = first.register_forward_hook(lambda _, inputs, output: torch.full_like(output, float("inf")))

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if batch_idx != self.batch:
            return
        if self.hook is not None:
            self.hook.remove()
        from pathlib import Path

        torch.save(
            {"before": self.before, "after": _state(module)}, Path(trainer.default_root_dir) / "around_bad_batch.pt"
        )


class ParametersAtStop(L.Callback):
    """When the run stops on an exception, saves the parameters it had before its last training
    batch and those it has now to ``parameters_at_stop.pt`` in the run directory."""

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        self.before = {name: p.detach().clone() for name, p in module.named_parameters()}

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        from pathlib import Path

        now = {name: p.detach().clone() for name, p in module.named_parameters()}
        torch.save({"before": self.before, "at_stop": now}, Path(trainer.default_root_dir) / "parameters_at_stop.pt")


# the tasks that export and every engine runs
EXPORT_TASKS = ("detection", "instance_segmentation", "segmentation", "classification")


def export_training_overrides(task: str, shapes_root: Path, voc_root: Path) -> list[str]:
    """The tiny training run of ``task`` on the shapes (segmentation: their VOC layout; classification:
    class folders generated beside them on first use)."""
    if task == "classification":
        return [*TINY_CLASSIFICATION, f"dataset.root={shapes_root.parent / 'shapes_cls'}", "backbone=resnet18"]
    if task == "segmentation":
        return [*TINY_SEGMENTATION, *shapes_seg_overrides(voc_root)]
    return [f"task={task}", "backbone=resnet18", *TINY_DETECTION, *shapes_overrides(shapes_root)]
