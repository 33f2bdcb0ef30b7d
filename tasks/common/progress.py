"""Progress bars for the long preparation steps (reading thousands of label files, checking images,
drawing masks): shown on a terminal only, so that logs of batch jobs do not fill with bar updates."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
MIN_ITEMS = 1000  # fewer items take a second or two: no bar


def progress(
    items: Iterable[T], total: int, what: str, unit: str = "files", min_items: int = MIN_ITEMS
) -> Iterator[T] | Iterable[T]:
    """``items`` with a bar (``what``, ``total`` of them) where there are at least ``min_items`` and
    standard error is a terminal."""
    if total < min_items:
        return items
    return tqdm(
        items, total=total, desc=what, unit=unit, disable=None, mininterval=1.0, leave=False, dynamic_ncols=True
    )
