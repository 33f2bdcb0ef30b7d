"""Predictions mapped back to the files they were made for."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def rescale_to_original(detections: list[dict[str, Tensor]], images: list[Tensor], targets: list[dict]) -> None:
    """Map boxes (masks, panoptic maps) from the size the model saw to the size of the file on disk, in place."""
    for det, image, target in zip(detections, images, targets, strict=True):
        (orig_h, orig_w), (h, w) = target["orig_size"], image.shape[-2:]
        scale = det["boxes"].new_tensor([orig_w / w, orig_h / h, orig_w / w, orig_h / h])
        det["boxes"] = det["boxes"] * scale
        if "masks" in det and (orig_h, orig_w) != (h, w) and len(det["masks"]):
            det["masks"] = F.interpolate(det["masks"], size=(orig_h, orig_w), mode="bilinear", align_corners=False)
        if "panoptic" in det and (orig_h, orig_w) != (h, w):  # segment ids: nearest, never blended
            resized = F.interpolate(det["panoptic"][None, None].float(), size=(orig_h, orig_w), mode="nearest")
            det["panoptic"] = resized[0, 0].to(det["panoptic"].dtype)


def count_capped(detections: list[dict[str, Tensor]], cap: int | None) -> int:
    """Images whose detections reached ``cap``: objects beyond it were lost."""
    return 0 if cap is None else sum(len(found["boxes"]) >= cap for found in detections)


def capped_message(capped: int, total: int, cap: int, option: str) -> str:
    return (
        f"{capped} of {total} images reached the cap of {cap} detections: objects beyond it are lost "
        f"(crowded images); raise {option}"
    )
