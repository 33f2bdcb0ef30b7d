"""Training on tiles of large images: crops of ``size`` pixels at full resolution, overlapping by
``overlap``, so that small objects keep their pixels instead of being shrunk with the whole image.

A box cut by a tile's border is clipped to it and kept when at least ``min_visible`` of its area
lies in the tile (DeepForest's and SAHI's rule); the rest of it is in a neighbouring tile. A box with
less inside is an ignore region of the tile (``ignore_boxes``): its pixels are neither an object nor
background to the detector (``heads.ignore_regions``). Tiles
without objects teach the background; ``keep_empty`` of them are kept (a seeded choice, fixed for
the run). Tiles are items of their own: the seeded, resumable epoch order shuffles them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.data.detection_dataset import DetectionDataset


def tile_starts(length: int, size: int, overlap: float) -> list[int]:
    """Offsets of tiles of ``size`` covering ``length``: a stride of ``size * (1 - overlap)``, the
    last tile flush with the end (one tile when the side fits)."""
    if length <= size:
        return [0]
    stride = max(1, round(size * (1 - overlap)))
    starts = list(range(0, length - size, stride))
    return [*starts, length - size]


def tile_windows(width: int, height: int, size: int, overlap: float) -> np.ndarray:
    """(K, 4) xyxy windows of the tiles covering a ``width`` x ``height`` image, row by row."""
    xs, ys = tile_starts(width, size, overlap), tile_starts(height, size, overlap)
    return np.asarray([[x, y, min(x + size, width), min(y + size, height)] for y in ys for x in xs], np.int64).reshape(
        -1, 4
    )


def boxes_in_window(boxes: np.ndarray, window: np.ndarray, min_visible: float) -> tuple[np.ndarray, np.ndarray]:
    """(boxes clipped to ``window`` in its coordinates, mask of the boxes kept): those with at least
    ``min_visible`` of their area (and one pixel each way) inside."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = window
    clipped = np.clip(boxes, [x0, y0, x0, y0], [x1, y1, x1, y1])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (w >= 1) & (h >= 1) & (w * h >= min_visible * np.maximum(area, 1e-9))
    return (clipped - [x0, y0, x0, y0]).astype(np.float32), keep


@dataclass(frozen=True)
class TileOptions:
    size: int
    overlap: float = 0.2
    min_visible: float = 0.5
    keep_empty: float = 0.1  # the share of tiles without objects kept

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"dataset.tile.size={self.size} must be at least 32 pixels")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"dataset.tile.overlap={self.overlap} must be in [0, 1)")
        if not 0 < self.min_visible <= 1:
            raise ValueError(f"dataset.tile.min_visible={self.min_visible} must be in (0, 1]")
        if not 0 <= self.keep_empty <= 1:
            raise ValueError(f"dataset.tile.keep_empty={self.keep_empty} must be in [0, 1]")


class TiledDataset(Dataset):
    """The tiles of every image of ``dataset`` as items (the same format, cut to the tile, then
    augmented by the dataset's pipeline). ``tiles``: (image position, x0, y0, x1, y1) per item."""

    def __init__(self, dataset: DetectionDataset, options: TileOptions, seed: int = 0) -> None:
        self.dataset, self.options = dataset, options
        index, rng = dataset.index, np.random.default_rng(seed)
        tiles, self.tile_classes = [], []  # the classes of the objects each tile holds
        for i in range(len(index)):
            start, end = index.box_offsets[i], index.box_offsets[i + 1]
            trained = ~np.asarray(index.ignored[start:end])
            boxes, labels = np.asarray(index.boxes[start:end])[trained], np.asarray(index.labels[start:end])[trained]
            for window in tile_windows(int(index.widths[i]), int(index.heights[i]), options.size, options.overlap):
                inside = boxes_in_window(boxes, window, options.min_visible)[1]
                if inside.any() or rng.random() < options.keep_empty:
                    tiles.append((i, *window))
                    self.tile_classes.append(tuple(sorted(set(labels[inside].tolist()))))
        self.tiles = np.asarray(tiles, np.int64).reshape(-1, 5)

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def transforms(self):
        """The whole-image dataset's pipeline, which augments each tile: the loader seeds it per sample
        (``SeededBatches``), so a tile's augmentation depends on its seed alone."""
        return self.dataset.transforms

    def item_classes(self) -> list[tuple[int, ...]]:
        return self.tile_classes

    @property
    def aspect_ratios(self) -> np.ndarray:
        return (self.tiles[:, 3] - self.tiles[:, 1]) / (self.tiles[:, 4] - self.tiles[:, 2])

    def __getitem__(self, item: int) -> tuple[torch.Tensor, dict]:
        position, *window = self.tiles[item].tolist()
        record, image, boxes, labels, masks = self.dataset.read(position)
        x0, y0, x1, y1 = window
        boxes, keep = boxes_in_window(boxes, np.asarray(window), self.options.min_visible)
        cut = ~keep & (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)  # in the tile, too little
        if masks is not None:
            masks = masks[keep, y0:y1, x0:x1]
        crop, labels = image[y0:y1, x0:x1], np.asarray(labels)[keep]
        image, out = self.dataset.item(record, crop, boxes[keep], labels, masks, ignore=boxes[cut])
        out["tile"] = tuple(window)  # where in the image (orig_size stays the image's)
        return image, out
