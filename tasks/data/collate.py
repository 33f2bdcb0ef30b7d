"""Batching shared by training and inference (no data module, no Lightning)."""

from __future__ import annotations

import torch


def collate_segmentation(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Pad images (bottom/right, zeros) into one tensor; each target keeps its mask and the
    image's unpadded size, so logits can be cropped and compared at the mask's resolution."""
    images = [image for image, _ in batch]
    height, width = max(i.shape[-2] for i in images), max(i.shape[-1] for i in images)
    stacked = images[0].new_zeros((len(images), 3, height, width))
    targets = []
    for k, (image, target) in enumerate(batch):
        stacked[k, :, : image.shape[-2], : image.shape[-1]] = image
        targets.append({**target, "size": (int(image.shape[-2]), int(image.shape[-1]))})
    return stacked, targets
