"""The PASCAL VOC colour map, and class-index masks written as palette PNGs with it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), 256 RGB entries."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r, g, b = r | ((c & 1) << shift), g | (((c >> 1) & 1) << shift), b | (((c >> 2) & 1) << shift)
            c >>= 3
        palette += [r, g, b]
    return palette


def save_palette_png(mask: np.ndarray, path: Path) -> None:
    """Write a class-index mask as a VOC palette PNG, atomically: a temporary file in the same
    folder renamed into place, so processes writing the same image never leave a torn file."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    image.save(tmp)
    os.replace(tmp, path)
