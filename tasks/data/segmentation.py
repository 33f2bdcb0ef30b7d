"""Semantic segmentation data: VOC2012 layout (optionally SBD-augmented), masks built from COCO
instances (cached), and the built-in shapes in VOC layout, behind one LightningDataModule interface.

Masks hold class indices 0..K-1 (0 is background) and 255 for pixels to ignore.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import albumentations as A
import lightning as L
import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset

from tasks.data.bad_images import keep_good_images
from tasks.data.coco import load_coco, read_categories
from tasks.data.doctor import ERROR, Finding
from tasks.data.images import MAX_PIXELS, inspect_image_file, read_rgb
from tasks.data.loader import training_loader
from tasks.data.shapes import SHAPE_CLASSES, ensure_shapes, split_spec
from tasks.data.voc import VOC_CLASSES
from tasks.metrics.confusion import ConfusionMatrixEvaluator

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
# COCO category ids of the 20 VOC classes in VOC order (0: background), as torchvision's reference uses
COCO_IDS_OF_VOC_CLASSES = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)


@dataclass(frozen=True)
class SegmentationRecord:
    image_id: int
    image: Path
    mask: Path


def read_mask(path: Path) -> np.ndarray:
    """Class-index mask as HxW uint8 (palette PNGs give their indices, grayscale PNGs their values)."""
    with Image.open(path) as mask:
        if mask.mode not in ("P", "L"):
            raise ValueError(f"mask {path} has mode {mask.mode}: expected a palette or 8-bit grayscale PNG of indices")
        return np.array(mask)


def record_problems(
    records: Sequence[SegmentationRecord], num_classes: int, *, decode: bool = False, max_pixels: int = MAX_PIXELS
) -> list[str]:
    """Every mask readable, of its upright image's size, holding only 0..K-1 or 255; ``decode``:
    the images' own problems too (truncation, pixel count, ...), by decoding them."""
    problems = []
    for record in records:
        image_problem, upright = inspect_image_file(record.image, decode=decode, max_pixels=max_pixels)
        if image_problem:
            problems.append(f"{record.image} is {image_problem}")
            continue
        width, height = upright
        try:
            mask = read_mask(record.mask)
        except (OSError, ValueError) as err:
            problems.append(f"{record.mask} is {'missing' if not record.mask.is_file() else f'unreadable ({err})'}")
            continue
        if mask.shape != (height, width):
            problems.append(f"{record.mask} is {mask.shape[1]}x{mask.shape[0]} but {record.image} is {width}x{height}")
        bad = sorted(set(np.unique(mask).tolist()) - set(range(num_classes)) - {IGNORE_INDEX})
        if bad:
            problems.append(f"{record.mask} holds label values {bad} outside 0..{num_classes - 1} (and 255)")
    return problems


def check_records(records: Sequence[SegmentationRecord], num_classes: int, source: str) -> None:
    """Start-up check (``record_problems`` without decoding images): raise with the problems found."""
    problems = record_problems(records, num_classes)
    if problems:
        shown = "\n    ".join(problems[:20]) + (
            f"\n    ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        raise ValueError(f"{source}: {len(problems)} segmentation problems:\n    {shown}")


def _files_key(records: Sequence[SegmentationRecord]) -> str:
    """A digest of every image and mask file's path, size and modification time."""
    digest = hashlib.sha1()
    for record in records:
        for path in (record.image, record.mask):
            stat = path.stat() if path.is_file() else None
            digest.update(f"{path}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}\n".encode())
    return digest.hexdigest()


def check_records_once(
    records: Sequence[SegmentationRecord], num_classes: int, source: str, stamp_dir: Path | None
) -> None:
    """``check_records``, skipped when a stamp in ``stamp_dir`` says these exact files passed before."""
    if stamp_dir is None:
        check_records(records, num_classes, source)
        return
    key = {"files": _files_key(records), "num_classes": num_classes}
    stamp = stamp_dir / f"checked-{hashlib.sha1(source.encode()).hexdigest()[:16]}.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return
    check_records(records, num_classes, source)
    stamp_dir.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
    tmp.write_text(json.dumps(key))
    os.replace(tmp, stamp)


def segmentation_transforms(
    *, train: bool, crop_size: int, scale_range: Sequence[float] = (0.5, 2.0), color_jitter: bool = True
) -> A.Compose | None:
    """Training: random scale, pad (image 0, mask 255) and random crop to ``crop_size``, flip,
    colour jitter. Evaluation: none (the image is resized separately when ``eval_size`` is set)."""
    if not train:
        return None
    low, high = scale_range
    steps: list[A.BasicTransform] = [
        A.RandomScale(scale_limit=(low - 1, high - 1), p=1.0),
        A.PadIfNeeded(crop_size, crop_size, position="top_left", border_mode=0, fill=0, fill_mask=IGNORE_INDEX),
        A.RandomCrop(crop_size, crop_size),
        A.HorizontalFlip(p=0.5),
    ]
    if color_jitter:
        steps.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.5))
    return A.Compose(steps)


class SegmentationDataset(Dataset):
    """Items: ``(uint8 CHW image, {"mask": int64 HxW, "image_id": int})``.

    With ``eval_size`` only the image is resized (longer side); the mask keeps the file's
    resolution, so metrics are computed at full resolution.
    """

    def __init__(
        self,
        records: list[SegmentationRecord],
        class_names: Sequence[str],
        transforms: A.Compose | None = None,
        eval_size: int | None = None,
        source: str = "",
    ) -> None:
        self.records = records
        self.class_names = list(class_names)
        self.transforms = transforms
        self.resize = A.LongestMaxSize(max_size=eval_size) if eval_size else None
        self.source = source
        self.max_pixels = MAX_PIXELS  # larger files are refused from their header

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        record = self.records[index]
        image, mask = read_rgb(record.image, self.max_pixels), read_mask(record.mask)
        if self.transforms is not None:
            out = self.transforms(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if self.resize is not None:
            image = self.resize(image=image)["image"]
        mask = torch.from_numpy(np.ascontiguousarray(mask)).long()
        target = {"mask": mask, "image_id": record.image_id, "file": str(record.image)}  # file: for error reports
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), target


def collate_segmentation(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Pad images (bottom/right, zeros) into one tensor; each target keeps its mask and the
    image's unpadded size, so logits can be cropped and compared at the mask's resolution."""
    images = [image for image, _ in batch]
    height, width = max(i.shape[-2] for i in images), max(i.shape[-1] for i in images)
    stacked = images[0].new_zeros((len(images), 3, height, width))
    targets = []
    for k, (image, target) in enumerate(batch):
        stacked[k, :, : image.shape[-2], : image.shape[-1]] = image
        targets.append({**target, "size": (int(image.shape[-2]), int(image.shape[-1]))})
    return stacked, targets


def voc_segmentation_records(
    root: Path, years: Sequence[str | int], split: str, *, use_sbd: bool = True, exclude: frozenset[str] = frozenset()
) -> list[SegmentationRecord]:
    """Records of ``ImageSets/Segmentation/<split>.txt`` for each year; for ``train`` in VOC2012 with
    ``SegmentationClassAug/`` and ``train_aug.txt`` present (SBD), the augmented list instead."""
    records = []
    for year in map(str, years):
        base = root / f"VOC{year}"
        masks, list_file = base / "SegmentationClass", base / "ImageSets" / "Segmentation" / f"{split}.txt"
        aug_list = base / "ImageSets" / "Segmentation" / "train_aug.txt"
        if use_sbd and split == "train" and (base / "SegmentationClassAug").is_dir() and aug_list.is_file():
            masks, list_file = base / "SegmentationClassAug", aug_list
            log.info("VOC%s: training on the SBD-augmented list %s", year, aug_list)
        if not list_file.is_file():
            raise FileNotFoundError(
                f"image set {list_file} not found (dataset.root={root}); expected VOC{year}/ImageSets/Segmentation/"
                f"{split}.txt, VOC{year}/JPEGImages/ and VOC{year}/SegmentationClass/"
            )
        for file_id in list_file.read_text().split():
            if file_id in exclude:
                continue
            records.append(
                SegmentationRecord(len(records) + 1, base / "JPEGImages" / f"{file_id}.jpg", masks / f"{file_id}.png")
            )
    return records


def _coco_labels(coco: COCO, categories: str) -> tuple[dict[int, int], list[str]]:
    """Mask value of each COCO category id, and the class names (background first)."""
    if categories == "voc":
        return {cat: i for i, cat in enumerate(COCO_IDS_OF_VOC_CLASSES) if cat}, ["background", *VOC_CLASSES]
    if categories == "all":
        ids = sorted(coco.getCatIds())
        return {cat: i + 1 for i, cat in enumerate(ids)}, ["background", *(coco.cats[c]["name"] for c in ids)]
    raise ValueError(f"categories={categories!r} must be 'all' or 'voc'")


_BUILD: dict = {}  # the ground truth of the masks being built, shared with forked workers


def _write_masks(image_ids: list[int]) -> None:
    coco, label_of, folder = _BUILD["coco"], _BUILD["labels"], _BUILD["folder"]
    for image_id in image_ids:
        info = coco.imgs[image_id]
        mask = np.zeros((info["height"], info["width"]), np.uint8)
        for ann in coco.imgToAnns.get(image_id, []):
            label = IGNORE_INDEX if ann.get("iscrowd", 0) else label_of.get(ann["category_id"])
            if label is not None:
                mask[coco.annToMask(ann) > 0] = label
        Image.fromarray(mask).save(folder / f"{Path(info['file_name']).stem}.png")


def _build_masks(coco: COCO, label_of: dict[int, int], folder: Path, workers: int) -> None:
    """Every image's mask into ``folder``, in ``workers`` forked processes."""
    image_ids = sorted(coco.imgs)
    _BUILD.update(coco=coco, labels=label_of, folder=folder)
    try:
        chunks = [image_ids[i : i + 256] for i in range(0, len(image_ids), 256)]
        if workers > 1 and len(chunks) > 1 and "fork" in mp.get_all_start_methods():
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
                list(pool.map(_write_masks, chunks))
        else:
            for chunk in chunks:
                _write_masks(chunk)
    finally:
        _BUILD.clear()


def coco_semantic_masks(
    image_dir: Path, ann_file: Path, cache_dir: Path, categories: str, *, build: bool = True, workers: int = 1
) -> tuple[list, list[str]]:
    """Semantic masks from COCO instances, cached as PNGs in ``cache_dir`` (built once, rebuilt when
    the json changes).

    ``categories="all"``: every json category, in id order, after background; ``"voc"``: the 20
    VOC classes (other objects become background), as torchvision's reference does. Crowd
    regions become 255 (ignored). The masks are built in ``workers`` processes into a temporary
    folder that is renamed into place when complete; ``build=False`` refuses to build (the
    caller expects another process to have done it).
    """
    key = {"annotations": str(ann_file.resolve()), "mtime_ns": ann_file.stat().st_mtime_ns, "categories": categories}
    stamp = cache_dir / "masks.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()).get("key") == key):
        if not build:
            raise RuntimeError(f"the semantic masks of {ann_file} are not in {cache_dir}: prepare_data builds them")
        coco = load_coco(ann_file)
        label_of, names = _coco_labels(coco, categories)
        log.info(
            "building %d semantic masks from %s into %s (%d processes)", len(coco.imgs), ann_file, cache_dir, workers
        )
        tmp = cache_dir.with_name(f".{cache_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _build_masks(coco, label_of, tmp, workers)
        # the image list travels with the masks: reading it back needs no pass over the json
        images = [[image_id, info["file_name"]] for image_id, info in sorted(coco.imgs.items())]
        (tmp / "masks.json").write_text(json.dumps({"key": key, "names": names, "images": images}))
        shutil.rmtree(cache_dir, ignore_errors=True)
        tmp.rename(cache_dir)
    content = json.loads(stamp.read_text())
    records = [
        SegmentationRecord(image_id, image_dir / file_name, cache_dir / f"{Path(file_name).stem}.png")
        for image_id, file_name in content["images"]
    ]
    return records, content["names"]


class SegmentationDataModule(L.LightningDataModule):
    """Loaders, mask-aware augmentation and the confusion-matrix evaluator; subclasses list records
    (``_records``) and name the classes (``_read_metadata``, without touching the data).

    ``prepare_data`` runs on one process (Lightning: global rank 0, or each node's first with
    ``prepare_per_node``) while the others wait: it builds derived files and checks every mask
    against its image once (the result is remembered in ``cache_dir`` until a file changes).
    """

    def __init__(
        self,
        *,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        crop_size: int = 513,
        scale_range: Sequence[float] = (0.5, 2.0),
        color_jitter: bool = True,
        eval_size: int | None = None,
        pin_memory: bool = False,
        prepare_per_node: bool = False,
        cache_dir: str | Path | None = None,
        skip_bad_images: bool = False,
        max_pixels: int = MAX_PIXELS,
        sampling_seed: int = 0,
    ) -> None:
        super().__init__()
        self.prepare_data_per_node = prepare_per_node
        self.skip_bad_images, self.max_pixels = skip_bad_images, max_pixels
        self.sampling_seed = sampling_seed
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.crop_size, self.scale_range, self.color_jitter = crop_size, tuple(scale_range), color_jitter
        self.eval_size = eval_size
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.train_set: SegmentationDataset | None = None
        self.val_set: SegmentationDataset | None = None
        self._prepared = False

    def _records(
        self, split: str, *, build: bool
    ) -> tuple[list[SegmentationRecord], list[str], str]:  # pragma: no cover
        """Records, class names and a description of ``split``; ``build``: derived files may be written."""
        raise NotImplementedError

    def _read_metadata(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare_data(self) -> None:
        if self._prepared:  # fit, then validate, would prepare twice
            return
        for split in ("train", "val"):
            records, names, source = self._records(split, build=True)
            if not records:
                raise ValueError(f"{source} lists no images")
            good = self._good_records(records, source, report=True)
            check_records_once(good, len(names), source, self.cache_dir)
        self._prepared = True

    def _good_records(
        self, records: list[SegmentationRecord], source: str, *, report: bool
    ) -> list[SegmentationRecord]:
        """``records`` without those whose image file is unusable, or a stop naming them
        (``keep_good_images``; checked once in ``prepare_data``, remembered for ``setup``)."""
        items = [(record.image, None, "") for record in records]
        key = hashlib.sha1(source.encode()).hexdigest()[:16]
        cache_file = self.cache_dir / f"image-checks-{key}.json" if self.cache_dir else None
        keep = keep_good_images(
            items,
            source=source,
            skip_bad_images=self.skip_bad_images,
            max_pixels=self.max_pixels,
            cache_file=cache_file,
            report=report,
        )
        return [records[i] for i in keep]

    def inspect(self, *, read_images: bool = True, max_pixels: int = MAX_PIXELS) -> tuple[list[Finding], list[str]]:
        """The dataset doctor's report: every problem of both splits, nothing raised."""
        findings, class_names = [], []
        for split in ("train", "val"):
            try:
                records, class_names, source = self._records(split, build=True)
            except (FileNotFoundError, ValueError) as err:
                findings.append(Finding(ERROR, "layout", str(err)))
                continue
            problems = record_problems(records, len(class_names), decode=read_images, max_pixels=max_pixels)
            findings += [Finding(ERROR, "segmentation file", f"{source}: {problem}") for problem in problems]
        return findings, class_names

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.trainer is None:  # used on its own: nobody prepared the data
            self.prepare_data()
        transforms = segmentation_transforms(
            train=True, crop_size=self.crop_size, scale_range=self.scale_range, color_jitter=self.color_jitter
        )
        for split in ("train", "val"):
            records, names, source = self._records(split, build=False)
            records = self._good_records(records, source, report=False)
            train = split == "train"
            dataset = SegmentationDataset(
                records, names, transforms if train else None, None if train else self.eval_size, source
            )
            dataset.max_pixels = self.max_pixels
            setattr(self, f"{split}_set", dataset)

    @cached_property
    def class_names(self) -> list[str]:
        return list(self._read_metadata())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def model_metadata(self) -> dict:
        """What a model built for this data may take from it (read without loading the data)."""
        return {"num_classes": self.num_classes, "class_names": self.class_names}

    def build_evaluator(self) -> ConfusionMatrixEvaluator:
        return ConfusionMatrixEvaluator(self.class_names, ignore_index=IGNORE_INDEX)

    def _loader_options(self) -> dict:
        return dict(
            num_workers=self.num_workers,
            collate_fn=collate_segmentation,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        # no batch of one: ASPP's pooled branch normalises over the batch
        return training_loader(
            self.train_set,
            self.batch_size,
            seed=self.sampling_seed,
            trainer=self.trainer,
            drop_last=True,
            **self._loader_options(),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size, **self._loader_options())


class VocSegDataModule(SegmentationDataModule):
    """VOC2012 segmentation layout under ``root`` (the VOCdevkit folder); ``use_sbd`` trains on
    ``SegmentationClassAug`` with ``train_aug.txt`` when present (validation images left out)."""

    def __init__(
        self,
        root: str | Path,
        *,
        train_years: Sequence[str | int] = (2012,),
        train_split: str = "train",
        val_years: Sequence[str | int] = (2012,),
        val_split: str = "val",
        class_names: Sequence[str] = ("background", *VOC_CLASSES),
        use_sbd: bool = True,
        **options,
    ) -> None:
        super().__init__(**options)
        self.root = Path(root).expanduser()
        self.splits = {"train": (list(train_years), train_split), "val": (list(val_years), val_split)}
        self.voc_class_names = list(class_names)
        self.use_sbd = use_sbd

    def _read_metadata(self) -> list[str]:
        return list(self.voc_class_names)

    def _records(self, split: str, *, build: bool) -> tuple[list[SegmentationRecord], list[str], str]:
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"dataset.root={self.root} does not exist; expected a VOCdevkit folder holding VOC<year>/JPEGImages, "
                "VOC<year>/SegmentationClass and VOC<year>/ImageSets/Segmentation"
            )
        years, image_set = self.splits[split]
        exclude: frozenset[str] = frozenset()
        if split == "train":  # never train on a validation image (SBD's list overlaps VOC val)
            val_years, val_set = self.splits["val"]
            val_records = voc_segmentation_records(self.root, val_years, val_set, use_sbd=False)
            exclude = frozenset(r.image.stem for r in val_records)
        records = voc_segmentation_records(self.root, years, image_set, use_sbd=self.use_sbd, exclude=exclude)
        return records, self.voc_class_names, f"{self.root} VOC{'+'.join(map(str, years))} {image_set}"


class CocoSegDataModule(SegmentationDataModule):
    """Semantic masks built from COCO instances (``categories``: ``all`` or ``voc``), cached under
    ``cache_dir`` (by default ``root/semantic_masks``) by ``prepare_data``, in ``mask_workers``
    processes (default: one per CPU)."""

    def __init__(
        self,
        root: str | Path,
        *,
        train_images: str = "train2017",
        train_annotations: str = "annotations/instances_train2017.json",
        val_images: str = "val2017",
        val_annotations: str = "annotations/instances_val2017.json",
        categories: str = "all",
        cache_dir: str | Path | None = None,
        mask_workers: int | None = None,
        **options,
    ) -> None:
        self.root = Path(root).expanduser()
        super().__init__(cache_dir=cache_dir or self.root / "semantic_masks", **options)
        self.splits = {"train": (train_images, train_annotations), "val": (val_images, val_annotations)}
        if categories not in ("all", "voc"):
            raise ValueError(f"categories={categories!r} must be 'all' or 'voc'")
        self.categories = categories
        self.mask_workers = mask_workers or os.cpu_count() or 1

    def _paths(self, split: str) -> tuple[Path, Path]:
        images, annotations = (self.root / p for p in self.splits[split])
        for path, what in ((annotations, "instances json"), (images, "image folder")):
            if not path.exists():
                raise FileNotFoundError(f"{what} {path} not found (dataset.root={self.root})")
        return images, annotations

    def _read_metadata(self) -> list[str]:
        if self.categories == "voc":
            return ["background", *VOC_CLASSES]
        _, names = read_categories(self._paths("val")[1])
        return ["background", *names]

    def _records(self, split: str, *, build: bool) -> tuple[list[SegmentationRecord], list[str], str]:
        images, annotations = self._paths(split)
        folder = self.cache_dir / f"{split}_{self.categories}"
        records, names = coco_semantic_masks(
            images, annotations, folder, self.categories, build=build, workers=self.mask_workers
        )
        return records, names, str(annotations)


class ShapesSegDataModule(VocSegDataModule):
    """The built-in shapes, generated on first use in VOC layout (background + 4 shape classes).

    Options named like ``ShapesSpec`` fields set the generation, as for detection's shapes.
    """

    def __init__(self, root: str | Path, **options) -> None:
        spec, options = split_spec(options)
        options.setdefault("train_years", (2007, 2012))
        options.setdefault("val_years", (2007,))
        super().__init__(root, class_names=("background", *SHAPE_CLASSES), use_sbd=False, **options)
        self.spec = spec

    def prepare_data(self) -> None:
        ensure_shapes(self.root, self.spec, layout="voc")
        super().prepare_data()

    def inspect(self, *, read_images: bool = True, max_pixels: int = MAX_PIXELS) -> tuple[list[Finding], list[str]]:
        ensure_shapes(self.root, self.spec, layout="voc")
        return super().inspect(read_images=read_images, max_pixels=max_pixels)
