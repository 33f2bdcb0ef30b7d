"""A detection split as a few flat arrays, cached on disk and memory-mapped.

A Python object per image (or a pycocotools index) in every training process and every
loader worker costs gigabytes at COCO scale, and reading such objects in a forked worker
copies their memory page by page. Flat numpy arrays cost a few bytes per box, and a
memory-mapped cache is shared by every process through the page cache instead of copied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from tasks.data.formats.masks import Segmentation, pack_segmentations, unpack_segmentation

log = logging.getLogger(__name__)

INDEX_VERSION = 2  # bump when the arrays change meaning: caches of another version are rebuilt


@dataclass
class ImageRecord:
    """One image's view of the index (built on demand)."""

    image_id: int
    path: Path
    height: int
    width: int
    boxes: np.ndarray  # (N, 4) float32 xyxy in pixels: the objects trained on
    labels: np.ndarray  # (N,) int64, contiguous 1..num_classes
    ignored: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # crowd / difficult
    segmentations: list[Segmentation] | None = None  # one per box (COCO encodings) when the index has masks
    ignored_segmentations: list[Segmentation | None] | None = None

    @property
    def aspect_ratio(self) -> float:
        return self.width / self.height


@dataclass
class DetectionIndex:
    """Images and their boxes; image ``i`` owns boxes ``box_offsets[i]:box_offsets[i + 1]``."""

    image_ids: np.ndarray  # (N,) int64
    heights: np.ndarray  # (N,) int32
    widths: np.ndarray  # (N,) int32
    name_offsets: np.ndarray  # (N + 1,) int64 into names
    names: np.ndarray  # uint8: the UTF-8 file paths (relative to the image root), one after another
    box_offsets: np.ndarray  # (N + 1,) int64 into boxes
    boxes: np.ndarray  # (M, 4) float32 xyxy
    labels: np.ndarray  # (M,) int64
    ignored: np.ndarray  # (M,) bool: crowd or difficult, an ignore region rather than a training box
    # with masks: box j's COCO segmentation as json bytes segms[segm_offsets[j]:segm_offsets[j + 1]]
    segm_offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (M + 1,), or empty
    segms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))

    @property
    def has_masks(self) -> bool:
        return len(self.segm_offsets) > 0

    def segmentation(self, box: int) -> Segmentation | None:
        return unpack_segmentation(self.segm_offsets, self.segms, box)

    def __len__(self) -> int:
        return len(self.image_ids)

    def file_name(self, i: int) -> str:
        return bytes(self.names[self.name_offsets[i] : self.name_offsets[i + 1]]).decode()

    def record(self, i: int, image_root: Path) -> ImageRecord:
        start, end = self.box_offsets[i], self.box_offsets[i + 1]
        boxes, labels, ignored = self.boxes[start:end], self.labels[start:end], self.ignored[start:end]
        record = ImageRecord(
            int(self.image_ids[i]),
            image_root / self.file_name(i),
            int(self.heights[i]),
            int(self.widths[i]),
            np.asarray(boxes[~ignored]),
            np.asarray(labels[~ignored]),
            np.asarray(boxes[ignored]),
        )
        if self.has_masks:
            rows = np.arange(start, end)
            record.segmentations = [self.segmentation(j) for j in rows[~ignored]]
            record.ignored_segmentations = [self.segmentation(j) for j in rows[ignored]]
        return record

    def select(self, positions: Sequence[int]) -> DetectionIndex:
        """The images at ``positions``, with their boxes, as a new in-memory index."""
        positions = np.asarray(positions, np.int64)
        starts, ends = self.box_offsets[:-1], self.box_offsets[1:]
        rows = [np.arange(starts[i], ends[i]) for i in positions]
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        return DetectionIndex.build(
            self.image_ids[positions],
            self.heights[positions],
            self.widths[positions],
            [self.file_name(i) for i in positions],
            [ends[i] - starts[i] for i in positions],
            self.boxes[rows],
            self.labels[rows],
            self.ignored[rows],
            [self.segmentation(j) for j in rows] if self.has_masks else None,
        )

    @property
    def aspect_ratios(self) -> np.ndarray:
        return self.widths / self.heights

    @classmethod
    def build(
        cls,
        image_ids: Sequence[int],
        heights: Sequence[int],
        widths: Sequence[int],
        file_names: Sequence[str],
        boxes_per_image: Sequence[int],
        boxes: np.ndarray,
        labels: np.ndarray,
        ignored: np.ndarray,
        segmentations: Sequence[Segmentation | None] | None = None,
    ) -> DetectionIndex:
        """From per-image columns and the boxes of all images in image order (with ``segmentations``,
        one per box, the index has masks)."""
        encoded = [name.encode() for name in file_names]
        masks = {}
        if segmentations is not None:
            masks = dict(zip(("segm_offsets", "segms"), pack_segmentations(segmentations), strict=True))
        return cls(
            image_ids=np.asarray(image_ids, np.int64),
            heights=np.asarray(heights, np.int32),
            widths=np.asarray(widths, np.int32),
            name_offsets=np.concatenate([[0], np.cumsum([len(n) for n in encoded], dtype=np.int64)]),
            names=np.frombuffer(b"".join(encoded), np.uint8).copy(),
            box_offsets=np.concatenate([[0], np.cumsum(boxes_per_image, dtype=np.int64)]),
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            labels=np.asarray(labels, np.int64),
            ignored=np.asarray(ignored, bool),
            **masks,
        )

    def save(self, folder: Path) -> None:
        for column in fields(self):
            np.save(folder / f"{column.name}.npy", getattr(self, column.name))

    @classmethod
    def load(cls, folder: Path) -> DetectionIndex:
        return cls(**{c.name: np.load(folder / f"{c.name}.npy", mmap_mode="r") for c in fields(cls)})


class IndexRecords(Sequence[ImageRecord]):
    """``records[i]`` of a dataset: the index's images as ``ImageRecord``s, built on access."""

    def __init__(self, index: DetectionIndex, image_root: Path) -> None:
        self.index, self.image_root = index, image_root

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> ImageRecord:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.index.record(i % len(self), self.image_root)

    def __iter__(self) -> Iterator[ImageRecord]:
        return (self[i] for i in range(len(self)))


def source_key(path: Path, **extra: object) -> dict:
    """What a cache built from ``path`` depends on: the file's identity, size and modification time."""
    stat = path.stat()
    return {"source": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **extra}


def cache_folder(cache_dir: Path, kind: str, key: dict) -> Path:
    name = hashlib.sha1(key["source"].encode()).hexdigest()[:16]
    return cache_dir / f"{kind}-{name}"


def read_cached(folder: Path, key: dict) -> tuple[DetectionIndex, dict] | None:
    """The cached index and its metadata when the cache was built from this exact source."""
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    if meta.get("key") != {**key, "version": INDEX_VERSION}:
        return None
    return DetectionIndex.load(folder), meta["metadata"]


def write_cached(folder: Path, key: dict, index: DetectionIndex, metadata: dict) -> None:
    """Write to a temporary folder beside ``folder``, then rename it into place (readers never see
    a half-written cache; of two concurrent writers one wins, both with the same content)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    index.save(tmp)
    (tmp / "meta.json").write_text(json.dumps({"key": {**key, "version": INDEX_VERSION}, "metadata": metadata}))
    stale = folder.with_name(f".{folder.name}.stale-{os.getpid()}")
    if folder.exists():
        folder.rename(stale)
    try:
        tmp.rename(folder)
    except OSError:  # another process renamed its identical copy first
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(stale, ignore_errors=True)


def cached_index(
    cache_dir: Path | None, kind: str, key: dict, build: Callable[[], tuple[DetectionIndex, dict]]
) -> tuple[DetectionIndex, dict]:
    """The index for ``key`` from ``cache_dir`` (memory-mapped), building and caching it when absent or stale.

    Without a cache folder, or when it cannot be written, the index is built in memory.
    """
    if cache_dir is None:
        return build()
    folder = cache_folder(Path(cache_dir), kind, key)
    found = read_cached(folder, key)
    if found is not None:
        return found
    index, metadata = build()
    try:
        write_cached(folder, key, index, metadata)
    except OSError as err:
        log.warning("could not cache the index of %s in %s (%s): it is rebuilt every run", key["source"], folder, err)
        return index, metadata
    log.info("indexed %s: %d images, %d boxes (cached in %s)", key["source"], len(index), len(index.boxes), folder)
    return DetectionIndex.load(folder), metadata
