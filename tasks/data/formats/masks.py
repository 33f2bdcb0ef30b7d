"""Instance masks in COCO's three encodings (polygons, compressed RLE, uncompressed RLE), through pycocotools."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

Segmentation = list | dict  # COCO's ``segmentation`` field: polygons, or an RLE dict


def segmentation_problem(segmentation: object) -> str | None:
    """Why ``segmentation`` is not a usable COCO segmentation, or None when it is."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "an empty polygon list"
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                return "a polygon that is not a flat list of at least three x, y pairs"
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in polygon):
                return "a polygon with a coordinate that is not a number"
        return None
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            return "an RLE without a [height, width] size"
        if not isinstance(counts, list | str):
            return "an RLE whose counts are neither a list (uncompressed) nor a string (compressed)"
        if isinstance(counts, list) and sum(counts) != size[0] * size[1]:
            return f"an uncompressed RLE whose counts sum to {sum(counts)}, not height x width = {size[0] * size[1]}"
        return None
    return f"a {type(segmentation).__name__}, neither a polygon list nor an RLE dict"


def to_rle(segmentation: Segmentation, height: int, width: int) -> dict:
    """One compressed RLE for any of the three encodings (several polygons are merged)."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def decode_segmentation(segmentation: Segmentation, height: int, width: int) -> np.ndarray:
    """The (height, width) uint8 mask of one object."""
    rle = to_rle(segmentation, height, width)
    if tuple(rle["size"]) != (height, width):
        raise ValueError(f"an RLE of size {rle['size']} on an image of height {height} and width {width}")
    return mask_utils.decode(rle)


def decode_masks(segmentations: Sequence[Segmentation], height: int, width: int) -> np.ndarray:
    """(N, height, width) uint8 masks."""
    masks = [decode_segmentation(s, height, width) for s in segmentations]
    return np.stack(masks) if masks else np.zeros((0, height, width), np.uint8)


def encode_mask(mask: np.ndarray) -> dict:
    """A binary (height, width) mask as a COCO result RLE (counts as a string, as in json files)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def pack_segmentations(segmentations: Sequence[Segmentation | None]) -> tuple[np.ndarray, np.ndarray]:
    """Segmentations as (offsets, UTF-8 json bytes) columns of a flat index; None is stored empty."""
    encoded = [b"" if s is None else json.dumps(s, separators=(",", ":")).encode() for s in segmentations]
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded], dtype=np.int64)])
    return offsets, np.frombuffer(b"".join(encoded), np.uint8).copy()


def unpack_segmentation(offsets: np.ndarray, data: np.ndarray, row: int) -> Segmentation | None:
    raw = bytes(data[offsets[row] : offsets[row + 1]])
    return json.loads(raw) if raw else None
