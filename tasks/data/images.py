"""Image decoding shared by every dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

_WIDE_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# Larger images are refused from their header: a few hundred bytes of PNG can declare gigapixels.
MAX_PIXELS = 80_000_000
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 or 270 degrees: width and height swap
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm")


def is_hidden(path: Path, base: Path) -> bool:
    """Whether ``path`` or a folder between ``base`` and it is hidden (a name starting with a dot)."""
    return any(part.startswith(".") for part in path.relative_to(base).parts)


def is_image_file(path: Path, base: Path) -> bool:
    """A file with an image suffix (any case), not hidden below ``base``: what datasets and
    prediction read from folders (clutter such as notes, archives and ``.DS_Store`` is ignored)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(path, base) and path.is_file()


def oversize_problem(width: int, height: int, max_pixels: int) -> str | None:
    """Why an image of this size is refused before decoding, or None."""
    if width * height <= max_pixels:
        return None
    return (
        f"{width}x{height} ({width * height / 1e6:.0f} MP), over max_pixels={max_pixels}: refused before "
        "decoding (a decompression bomb?); raise dataset.max_pixels if the image is genuine"
    )


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied, read from the header only."""
    width, height = image.size
    transposed = image.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED_ORIENTATIONS
    return (height, width) if transposed else (width, height)


def inspect_image_file(
    path: Path, *, decode: bool = True, recorded_size: tuple[int, int] | None = None, max_pixels: int = MAX_PIXELS
) -> tuple[str | None, tuple[int, int] | None]:
    """What makes an image file unusable (or None), and its upright (width, height) when the header
    could be read. Header checks first (pixel count, size against the annotation's, EXIF
    rotation); ``decode`` then decodes every pixel, which finds truncated files that
    ``Image.verify`` passes. The file is opened once."""
    if not path.is_file():
        return "missing", None
    upright = None
    try:
        with Image.open(path) as image:
            width, height = image.size
            oversize = oversize_problem(width, height, max_pixels)
            if oversize:
                return oversize, None
            upright = upright_size(image)
            if recorded_size is not None and tuple(recorded_size) != upright:
                if upright != (width, height) and tuple(recorded_size) == (width, height):
                    return (
                        f"EXIF-rotated: upright it is {upright[0]}x{upright[1]}, but the annotation records the "
                        f"unrotated {width}x{height}, so its boxes would be misplaced; save the pixels upright "
                        "without the EXIF orientation tag, or fix the annotation"
                    ), upright
                recorded = f"{recorded_size[0]}x{recorded_size[1]}"
                return f"{upright[0]}x{upright[1]}, but the annotation records {recorded}", upright
            if decode:
                # JPEGs decode at 1/8 scale: twice as fast, and every byte is still read, so a
                # truncated or corrupt stream fails just the same
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
    except Exception as err:  # noqa: BLE001 - any decoder failure (truncation, bomb, format) makes it unusable
        return f"unreadable ({err})", upright
    return None, upright


def image_file_problem(path: Path, **checks) -> str | None:
    """What makes an image file unusable, or None (``inspect_image_file``'s checks)."""
    return inspect_image_file(path, **checks)[0]


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def read_rgb(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image upright (EXIF orientation applied) as HxWx3 uint8 RGB.

    Grayscale, palette, RGBA and CMYK go through PIL's conversion; 16-bit (and 32-bit
    integer) grayscale is scaled from 0..65535 to 0..255 rather than clipped. Images over
    ``max_pixels`` are refused from their header, before decoding.
    """
    with Image.open(path) as image:
        oversize = oversize_problem(image.width, image.height, max_pixels)
        if oversize:
            raise ValueError(oversize)
        image = ImageOps.exif_transpose(image)
        if image.mode in _WIDE_INT_MODES:
            return _gray_to_rgb(np.asarray(image, dtype=np.float64) / 257.0)
        if image.mode == "F":
            gray = np.asarray(image, dtype=np.float64)
            return _gray_to_rgb(gray * 255 if gray.max(initial=0) <= 1 else gray)
        return np.array(image.convert("RGB"))
