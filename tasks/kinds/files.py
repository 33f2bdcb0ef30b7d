"""Where ``tasks/predict.py`` writes an image's files: one name per input, never two inputs on one file."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

# overlays keep the input's format where it holds RGB; others (gif, pbm ...) become PNG
OVERLAY_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def overlay_name(relative: Path) -> Path:
    suffix = relative.suffix.lower() if relative.suffix.lower() in OVERLAY_SUFFIXES else ".png"
    return relative.with_suffix(suffix)


class PredictionFiles:
    """The run directory's output files, named after the input files."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.written: set[str] = set()  # output names relative to the run directory, lower case

    def name(self, folder: str, relative: Path, suffix: str | None = None) -> Path:
        """A free name under ``folder`` for the input ``relative`` (relative to the run directory), its
        folder created: the input's name (with ``suffix``), or for another input that maps onto it (a.gif
        and a.png both give a.png; x.JPG and x.jpg both give x.jpg) the name with the input's suffix in
        the stem (a_gif.png), then a count (x_jpg_2.jpg). Names are compared ignoring case, as some file
        systems do."""
        name = Path(folder) / (relative.with_suffix(suffix) if suffix else relative)
        input_suffix = relative.suffix.lstrip(".").lower()
        candidates = (name.with_name(f"{name.stem}{tail}{name.suffix}") for tail in _tails(input_suffix))
        name = next(c for c in candidates if c.as_posix().lower() not in self.written)
        self.written.add(name.as_posix().lower())
        (self.output_dir / name).parent.mkdir(parents=True, exist_ok=True)
        return name

    def save_overlay(self, picture: np.ndarray, relative: Path) -> Path:
        """``overlays/<input's name>``: the picture drawn over the input image."""
        overlay = self.name("overlays", relative, overlay_name(relative).suffix)
        Image.fromarray(picture).save(self.output_dir / overlay)
        return overlay


def _tails(suffix: str) -> Iterator[str]:
    yield ""
    yield f"_{suffix}"
    yield from (f"_{suffix}_{count}" for count in itertools.count(2))
