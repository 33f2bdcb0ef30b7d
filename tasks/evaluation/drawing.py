"""Pictures of images with boxes, masks or class maps drawn: ground truth and predictions, one item or a
grid of them (``show_dataset.py``, the validation pictures of a run, ``predict.py``'s overlays)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.ops import masks_to_boxes
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from tasks.data.formats.palette import voc_palette

MASK_ALPHA = 0.5


def class_colours(count: int) -> list[tuple[int, int, int]]:
    """The VOC palette colour of each class index (0: black), as in the segmentation PNGs."""
    palette = voc_palette()
    return [tuple(palette[3 * (k % 256) : 3 * (k % 256) + 3]) for k in range(count)]


def draw_detections(
    image: np.ndarray, detections: dict[str, Tensor], class_names: Sequence[str], mask_threshold: float
) -> np.ndarray:
    """Masks blended in their class colour, then boxes labelled with class name and score (ground
    truth, without ``scores``: the name only)."""
    picture = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    colours = class_colours(len(class_names) + 1)
    labels = detections["labels"].tolist()
    box_colours = [colours[label] for label in labels]
    if "masks" in detections and labels:
        masks = detections["masks"][:, 0] >= mask_threshold
        picture = draw_segmentation_masks(picture, masks, alpha=MASK_ALPHA, colors=box_colours)
    scores = detections["scores"].tolist() if "scores" in detections else [None] * len(labels)  # None: ground truth
    captions = [
        class_names[label - 1] + ("" if score is None else f" {score:.2f}")
        for label, score in zip(labels, scores, strict=True)
    ]
    width = max(1, round(min(image.shape[:2]) / 250))
    if labels:
        picture = draw_bounding_boxes(picture, detections["boxes"], labels=captions, colors=box_colours, width=width)
    return picture.permute(1, 2, 0).numpy()


def semantic_mask(logits: Tensor, original: np.ndarray) -> np.ndarray:
    """Class indices at the original image's size (logits upsampled bilinearly, then argmax)."""
    scores = F.interpolate(logits[None].float(), size=original.shape[:2], mode="bilinear", align_corners=False)
    return scores[0].argmax(0).to(torch.uint8).numpy()


def draw_semantic(image: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Each class present blended in its palette colour; class 0 (VOC's background, black) is left clear."""
    picture = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    present = [k for k in np.unique(mask).tolist() if k != 0]
    if not present:
        return image
    colours = class_colours(num_classes)
    masks = torch.from_numpy(np.stack([mask == k for k in present]))
    picture = draw_segmentation_masks(picture, masks, alpha=MASK_ALPHA, colors=[colours[k] for k in present])
    return picture.permute(1, 2, 0).numpy()


def panoptic_from_target(target: dict, num_things: int) -> tuple[Tensor, Tensor]:
    """A panoptic item's ground truth as a segment map and its labels: the stuff of ``sem_seg`` (class
    ``s``: label ``num_things + s``; things and void left out), then each thing's mask."""
    semantic = target["sem_seg"]
    panoptic = torch.zeros(semantic.shape, dtype=torch.int32)
    labels = []
    for stuff in torch.unique(semantic).tolist():
        if 1 <= stuff < 255:
            labels.append(num_things + stuff)
            panoptic[semantic == stuff] = len(labels)
    for mask, label in zip(target["masks"], target["labels"].tolist(), strict=True):
        labels.append(label)
        panoptic[mask.bool()] = len(labels)
    return panoptic, torch.tensor(labels, dtype=torch.int64)


def draw_panoptic(
    image: np.ndarray,
    panoptic: Tensor,
    labels: Tensor,
    class_names: Sequence[str],
    num_things: int,
    scores: Tensor | None = None,
) -> np.ndarray:
    """Every segment of ``panoptic`` (id ``k``: ``labels[k - 1]``, things 1..``num_things`` then stuff;
    ``class_names`` names them all) blended in its class colour; things also boxed and named (with their
    ``scores``, predictions)."""
    picture = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    colours = class_colours(len(class_names) + 1)
    present = [k for k in torch.unique(panoptic).tolist() if k > 0]
    if not present:
        return image
    masks = torch.stack([panoptic == k for k in present])
    segment_labels = [int(labels[k - 1]) for k in present]
    picture = draw_segmentation_masks(picture, masks, alpha=MASK_ALPHA, colors=[colours[c] for c in segment_labels])
    things = [i for i, label in enumerate(segment_labels) if label <= num_things]
    if things:
        captions = [
            class_names[segment_labels[i] - 1] + ("" if scores is None else f" {float(scores[present[i] - 1]):.2f}")
            for i in things
        ]
        boxes = masks_to_boxes(masks[things]) + torch.tensor([0.0, 0.0, 1.0, 1.0])
        width = max(1, round(min(image.shape[:2]) / 250))
        thing_colours = [colours[segment_labels[i]] for i in things]
        picture = draw_bounding_boxes(picture, boxes, labels=captions, colors=thing_colours, width=width)
    return picture.permute(1, 2, 0).numpy()


def as_uint8(image: torch.Tensor) -> np.ndarray:
    """HxWx3 uint8 from a dataset's CHW image (uint8, or float in 0..1 or 0..255)."""
    if image.dtype != torch.uint8:
        scale = 255 if image.max() <= 1.0 else 1
        image = (image.float() * scale).clamp(0, 255).to(torch.uint8)
    return image.permute(1, 2, 0).numpy()


def as_uint8_chw(image: torch.Tensor) -> torch.Tensor:
    """A dataset's CHW image (uint8, or float in 0..1 or 0..255) as a uint8 CHW tensor on the CPU."""
    return torch.from_numpy(as_uint8(image.cpu())).permute(2, 0, 1)


def fit_item(image: torch.Tensor, target: dict, size: int) -> tuple[torch.Tensor, dict]:
    """The item scaled so its longer side is ``size`` (small images enlarged, so that names stay
    readable), boxes and masks with it."""
    height_in, width_in = image.shape[-2:]
    scale = size / max(height_in, width_in)
    height, width = round(image.shape[-2] * scale), round(image.shape[-1] * scale)
    image = F.interpolate(image[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
    target = dict(target)
    if "boxes" in target:
        target["boxes"] = target["boxes"] * torch.tensor([width / width_in, height / height_in] * 2)
    for key, batch in (("masks", True), ("mask", False), ("sem_seg", False)):
        if key in target and target[key].numel():
            masks = target[key].float() if batch else target[key][None].float()
            masks = F.interpolate(masks[None], size=(height, width), mode="nearest")[0]
            target[key] = (masks if batch else masks[0]).to(target[key].dtype)
    return image.round().clamp(0, 255).to(torch.uint8), target


def draw_item(
    image: torch.Tensor,
    target: dict,
    class_names: list[str],
    size: int | None = None,
    stuff_names: Sequence[str] = (),
) -> np.ndarray:
    """One item with its ground truth: boxes (and masks) with class names, a class map, a panoptic map
    (items with ``sem_seg``; ``stuff_names`` name the stuff), or a caption; ``size``: scaled to that
    longer side first."""
    image = as_uint8_chw(image)
    if size:
        image, target = fit_item(image, target, size)
    picture = image.permute(1, 2, 0).numpy()
    if "sem_seg" in target:
        panoptic, labels = panoptic_from_target(target, len(class_names))
        drawn = draw_panoptic(picture, panoptic, labels, [*class_names, *stuff_names], len(class_names))
        return caption(drawn, f"{len(target['labels'])} objects")
    if "boxes" in target:
        labels = target["labels"]
        found = {"boxes": target["boxes"], "labels": labels}
        if "masks" in target and len(labels):
            found["masks"] = target["masks"][:, None].float()
        drawn = draw_detections(picture, found, class_names, mask_threshold=0.5)
        return caption(drawn, f"{len(labels)} objects")
    if "mask" in target:
        mask = target["mask"][None, None].float()
        mask = F.interpolate(mask, size=picture.shape[:2], mode="nearest")[0, 0].to(torch.uint8).numpy()
        return draw_semantic(picture, np.where(mask == 255, 0, mask), len(class_names))
    return caption(picture, class_names[int(target["label"])])


def caption(picture: np.ndarray, text: str) -> np.ndarray:
    canvas = torch.from_numpy(np.ascontiguousarray(picture)).permute(2, 0, 1)
    frame = torch.tensor([[0.0, 0.0, picture.shape[1] - 1, picture.shape[0] - 1]])
    return draw_bounding_boxes(canvas, frame, labels=[text], colors="white", width=1).permute(1, 2, 0).numpy()


def spread(length: int, count: int) -> list[int]:
    """``count`` positions of ``length`` items, evenly spaced from the first to the last (the same every
    time, so that pictures of one split can be compared)."""
    count = min(count, length)
    return np.linspace(0, length - 1, count).round().astype(int).tolist() if count else []


def grid(pictures: list[np.ndarray], cell: int | tuple[int, int], columns: int) -> Image.Image:
    """Pictures scaled down to fit cells of ``cell`` pixels (square, or width x height), in rows of ``columns``."""
    width, height = (cell, cell) if isinstance(cell, int) else cell
    rows = math.ceil(len(pictures) / columns)
    sheet = Image.new("RGB", (columns * width, rows * height), (32, 32, 32))
    for k, picture in enumerate(pictures):
        image = Image.fromarray(picture)
        image.thumbnail((width - 4, height - 4))
        sheet.paste(image, ((k % columns) * width + 2, (k // columns) * height + 2))
    return sheet
