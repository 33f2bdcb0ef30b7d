"""Object sizes as the detector sees them (after the configured resize) against its anchors.

A box's size is ``sqrt(w * h)`` in the detector's input pixels. Large photos of small objects are
the usual failure: a 6000x4000 image brought to 1333 px turns a 20 px object into 4 px, under any
anchor and under the stride of every pyramid level. The doctor reports the distribution;
``task.model.anchor_sizes=auto`` fits the anchors to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tasks.data.detection_index import DetectionIndex
from tasks.data.doctor import INFO, WARNING, Finding

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
AUTO_QUANTILE = 0.1  # the smallest anchor: this quantile of the training objects' sizes
FEW_PIXELS = 8  # objects under this many input pixels span two cells of the finest (stride 4) level


def input_scales(
    index: DetectionIndex,
    min_size: int | Sequence[int],
    max_size: int,
    resize_longest: int | None,
    tile_size: int | None = None,
):
    """Each image's scale from its file to the detector's input: the data pipeline's shrink of the
    longer side to ``resize_longest`` (never enlarging), then the detector's own resize (shorter
    side to ``min_size``, longer side at most ``max_size``; the evaluation size where several).
    ``tile_size``: the detector sees tiles of that size, cut at full resolution."""
    widths, heights = index.widths.astype(float), index.heights.astype(float)
    if tile_size:
        widths, heights, resize_longest = np.minimum(widths, tile_size), np.minimum(heights, tile_size), None
    shrink = (
        np.ones(len(widths)) if not resize_longest else np.minimum(1.0, resize_longest / np.maximum(widths, heights))
    )
    widths, heights = widths * shrink, heights * shrink
    short = min_size[-1] if isinstance(min_size, Sequence) else min_size
    model = np.minimum(short / np.minimum(widths, heights), max_size / np.maximum(widths, heights))
    return shrink * model


def fit_min_size(index: DetectionIndex, max_size: int, resize_longest: int | None, tile_size: int | None) -> int:
    """``min_size=auto``: the training images' median shorter side as the detector receives them (after the
    data pipeline's shrink, or the tile), at most ``max_size``: images keep their own resolution up to
    ``max_size`` on the longer side, and small images are not enlarged (compute grows with the square)."""
    widths, heights = index.widths.astype(float), index.heights.astype(float)
    if tile_size:
        widths, heights = np.minimum(widths, tile_size), np.minimum(heights, tile_size)
    elif resize_longest:
        shrink = np.minimum(1.0, resize_longest / np.maximum(widths, heights))
        widths, heights = widths * shrink, heights * shrink
    if not len(widths):
        raise ValueError("min_size=auto needs training images, and the training split has none")
    return int(min(max_size, round(float(np.median(np.minimum(widths, heights))))))


def input_sizes(index: DetectionIndex, **resize) -> np.ndarray:
    """``sqrt(w * h)`` of every trained box (ignore regions left out), in the detector's input pixels."""
    counts = np.diff(index.box_offsets)
    scale = np.repeat(input_scales(index, **resize), counts)
    boxes, trained = np.asarray(index.boxes, float), ~np.asarray(index.ignored)
    sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    return (sides * scale)[trained]


def fit_anchor_base(sizes: np.ndarray) -> int:
    """The smallest anchor for ``anchor_sizes=auto``: the training objects' 10th-percentile size
    (each pyramid level above doubles it, as the levels' strides do), at least 4 px."""
    if not len(sizes):
        raise ValueError("anchor_sizes=auto needs training boxes, and the training split has none")
    return max(4, round(float(np.quantile(sizes, AUTO_QUANTILE))))


def size_findings(sizes: np.ndarray, anchor_sizes: Sequence) -> list[Finding]:
    """The size distribution against the anchors, with warnings (as errors are not: training runs)."""
    if not len(sizes):
        return []
    smallest = min(s if isinstance(s, int | float) else min(s) for s in anchor_sizes)
    quantiles = ", ".join(
        f"{int(q * 100)}%: {v:.1f}" for q, v in zip(QUANTILES, np.quantile(sizes, QUANTILES), strict=True)
    )
    findings = [
        Finding(
            INFO,
            "object sizes",
            f"{len(sizes):,} training boxes, sqrt(w*h) in input pixels after the resize: "
            f"{quantiles}; anchors {list(anchor_sizes)}",
        )  # fmt: skip
    ]
    under = float(np.mean(sizes < smallest))
    if under > 0.5:
        findings.append(
            Finding(
                WARNING,
                "objects under the smallest anchor",
                f"{under:.0%} of the training objects are smaller than the smallest anchor ({smallest} px): pass "
                "task.model.anchor_sizes=auto (fitted to these boxes), or enlarge the input "
                "(task.model.min_size / max_size, dataset.resize_longest) or train on tiles (dataset.tile.size)",
            )
        )
    tiny = float(np.mean(sizes < FEW_PIXELS))
    if tiny > 0.1:
        findings.append(
            Finding(
                WARNING,
                "objects of a few pixels",
                f"{tiny:.0%} of the training objects are under {FEW_PIXELS} px once resized (the finest pyramid level "
                "has a stride of 4 px): train and predict on tiles (dataset.tile.size=...) or enlarge the input",
            )
        )
    return findings
