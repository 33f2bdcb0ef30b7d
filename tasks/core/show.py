"""``tasks/show_dataset.py``: a grid of a split's images with their ground truth drawn, as the loader
delivers them (after augmentation and tiling) or as the files hold them: the first thing to look at
when a model learns nothing (boxes shifted by a pixel convention, classes swapped, masks misaligned)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from torchvision.utils import draw_bounding_boxes

from tasks.common.errors import UserError
from tasks.inference.outputs import draw_detections, draw_semantic

log = logging.getLogger(__name__)


def _as_uint8(image: torch.Tensor) -> np.ndarray:
    """HxWx3 uint8 from a dataset's CHW image (uint8, or float in 0..1 or 0..255)."""
    if image.dtype != torch.uint8:
        scale = 255 if image.max() <= 1.0 else 1
        image = (image.float() * scale).clamp(0, 255).to(torch.uint8)
    return image.permute(1, 2, 0).numpy()


def _fit(image: torch.Tensor, target: dict, size: int) -> tuple[torch.Tensor, dict]:
    """The item scaled so its longer side is ``size`` (small images enlarged, so that names stay
    readable), boxes and masks with it."""
    height_in, width_in = image.shape[-2:]
    scale = size / max(height_in, width_in)
    height, width = round(image.shape[-2] * scale), round(image.shape[-1] * scale)
    image = F.interpolate(image[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
    target = dict(target)
    if "boxes" in target:
        target["boxes"] = target["boxes"] * torch.tensor([width / width_in, height / height_in] * 2)
    for key, batch in (("masks", True), ("mask", False)):
        if key in target and target[key].numel():
            masks = target[key].float() if batch else target[key][None].float()
            masks = F.interpolate(masks[None], size=(height, width), mode="nearest")[0]
            target[key] = (masks if batch else masks[0]).to(target[key].dtype)
    return image.round().clamp(0, 255).to(torch.uint8), target


def draw_item(image: torch.Tensor, target: dict, class_names: list[str], size: int | None = None) -> np.ndarray:
    """One item with its ground truth: boxes (and masks) with class names, a class map, or a caption;
    ``size``: scaled to that longer side first."""
    image = torch.from_numpy(_as_uint8(image)).permute(2, 0, 1)
    if size:
        image, target = _fit(image, target, size)
    picture = image.permute(1, 2, 0).numpy()
    if "boxes" in target:
        labels = target["labels"]
        found = {"boxes": target["boxes"], "labels": labels}
        if "masks" in target and len(labels):
            found["masks"] = target["masks"][:, None].float()
        drawn = draw_detections(picture, found, class_names, mask_threshold=0.5)
        return _caption(drawn, f"{len(labels)} objects")
    if "mask" in target:
        mask = target["mask"][None, None].float()
        mask = F.interpolate(mask, size=picture.shape[:2], mode="nearest")[0, 0].to(torch.uint8).numpy()
        return draw_semantic(picture, np.where(mask == 255, 0, mask), len(class_names))
    return _caption(picture, class_names[int(target["label"])])


def _caption(picture: np.ndarray, text: str) -> np.ndarray:
    canvas = torch.from_numpy(np.ascontiguousarray(picture)).permute(2, 0, 1)
    frame = torch.tensor([[0.0, 0.0, picture.shape[1] - 1, picture.shape[0] - 1]])
    return draw_bounding_boxes(canvas, frame, labels=[text], colors="white", width=1).permute(1, 2, 0).numpy()


def grid(pictures: list[np.ndarray], cell: int, columns: int) -> Image.Image:
    """Pictures scaled to fit ``cell`` pixels square, in rows of ``columns``."""
    rows = math.ceil(len(pictures) / columns)
    sheet = Image.new("RGB", (columns * cell, rows * cell), (32, 32, 32))
    for k, picture in enumerate(pictures):
        image = Image.fromarray(picture)
        image.thumbnail((cell - 4, cell - 4))
        sheet.paste(image, ((k % columns) * cell + 2, (k // columns) * cell + 2))
    return sheet


def show_dataset(cfg: DictConfig) -> Path:
    """Write ``dataset_<split>.png`` into the run directory and return its path."""
    if cfg.split not in ("train", "val"):
        raise UserError(f"split={cfg.split} must be train or val")
    datamodule = instantiate(cfg.dataset, **cfg.task.get("dataset_options", {}))
    datamodule.setup()
    dataset = datamodule.train_set if cfg.split == "train" else datamodule.val_set
    if not cfg.augmented:
        dataset = datamodule.unaugmented(cfg.split)
    count = min(int(cfg.count), len(dataset))
    positions = np.linspace(0, len(dataset) - 1, count).round().astype(int) if count else []
    size = int(cfg.cell_size) - 4
    pictures = [draw_item(*dataset[int(i)], datamodule.class_names, size) for i in positions]
    path = Path(cfg.paths.output_dir) / f"dataset_{cfg.split}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(pictures, int(cfg.cell_size), int(cfg.columns)).save(path)
    state = "as the training loader delivers them" if cfg.augmented else "as the files hold them"
    log.info("%d of %d %s images %s, ground truth drawn: %s", count, len(dataset), cfg.split, state, path)
    return path
