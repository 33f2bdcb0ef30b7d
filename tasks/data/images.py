"""Image decoding shared by every dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

_WIDE_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image upright (EXIF orientation applied) as HxWx3 uint8 RGB.

    Grayscale, palette, RGBA and CMYK go through PIL's conversion; 16-bit (and 32-bit
    integer) grayscale is scaled from 0..65535 to 0..255 rather than clipped.
    """
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in _WIDE_INT_MODES:
            return _gray_to_rgb(np.asarray(image, dtype=np.float64) / 257.0)
        if image.mode == "F":
            gray = np.asarray(image, dtype=np.float64)
            return _gray_to_rgb(gray * 255 if gray.max(initial=0) <= 1 else gray)
        return np.array(image.convert("RGB"))
