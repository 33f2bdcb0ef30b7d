"""Which files ``input=`` names, and how each is decoded and sized for the model."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tasks.common.errors import UserError
from tasks.data.augment import Resize, longest_side_resize, shorter_side_crop
from tasks.data.images import IMAGE_SUFFIXES, MAX_PIXELS, is_image_file, read_rgb


def _fixed_prefix(pattern: str) -> Path:
    """The folder part of a glob pattern before its first wildcard."""
    fixed = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def find_images(spec: str) -> tuple[list[Path], Path]:
    """The image files of ``spec`` (a file, a folder and its subfolders, or a glob pattern), sorted,
    and the folder that names in the outputs are relative to. Hidden and non-image files are left out."""
    if not spec:
        raise UserError("predict needs images: pass input=PATH (a file, a folder or a glob such as 'photos/*.jpg')")
    path = Path(spec).expanduser()
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        base, candidates = path, path.rglob("*")
    else:
        base, candidates = _fixed_prefix(str(path)), map(Path, glob.glob(str(path), recursive=True))
    found = sorted(p for p in candidates if is_image_file(p, base))
    if not found:
        raise UserError(f"input={spec} names no image file (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found, base


def resizer(preprocessing: dict) -> Resize | None:
    """The data-side resize that evaluation images had in training (``inference_preprocessing``):
    classifiers' shorter side and centre crop, or the longer side of detectors and segmenters."""
    if preprocessing.get("resize_shorter"):
        return shorter_side_crop(preprocessing["resize_shorter"], preprocessing.get("center_crop"))
    return longest_side_resize(preprocessing.get("resize_longest"), upscale=bool(preprocessing.get("upscale")))


def prepare(path: Path, resize: Resize | None, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, Tensor]:
    """The file decoded upright as training decodes it (HxWx3 uint8), and the model's input made
    from it (3 x h x w float in [0, 1], resized when training resized evaluation images)."""
    image = read_rgb(path, max_pixels)
    sized = resize(image) if resize is not None else image
    return image, torch.from_numpy(np.ascontiguousarray(sized)).permute(2, 0, 1).float().div_(255)
