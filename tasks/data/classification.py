"""Image classification data: class folders (``imagefolder``), the ILSVRC2012 layout (``imagenet``)
and the built-in ``shapes_cls``, behind one data module interface (``tasks.data.base.TaskDataModule``).

Items are ``(uint8 CHW image, {"label", "image_id", "file"})``; every image of a batch has the crop
size. Images are decoded like every other dataset's (``read_rgb``: EXIF upright, any mode to RGB);
hidden files and folders and files without an image suffix are not listed; unreadable files are
found at start-up and stop the run or are left out (``skip_bad_images``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from tasks.data.augment import Pipeline, classification_transforms, pipeline_seed
from tasks.data.bad_images import find_bad_images
from tasks.data.base import TaskDataModule
from tasks.data.doctor import ERROR, DatasetError, Finding
from tasks.data.images import MAX_PIXELS, image_file_problem, is_image_file, read_rgb

log = logging.getLogger(__name__)

ImageRecord = tuple[Path, int]  # file, class index
AUTO_AUGMENT = ("ta_wide",)
IMAGENET_MEAN_PIXEL = (124, 116, 104)  # what a normalised 0 is: RandomErasing's fill on uint8 images


def class_folders(split_dir: Path) -> list[str]:
    """The class folders of ``split_dir``, sorted by name (hidden folders are not classes)."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} is not a folder; expected one subfolder per class in it")
    return sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def folder_records(split_dir: Path, classes: Sequence[str]) -> list[ImageRecord]:
    """Every image file below each class folder of ``split_dir`` (subfolders included), sorted; a folder
    that is not one of ``classes`` is an error naming it."""
    found = class_folders(split_dir)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DatasetError(
            f"{split_dir} has class folders the training split lacks: {unknown[:10]}; the classes are the "
            f"training split's folders ({len(classes)}: {list(classes)[:10]}...). Rename or remove them"
        )
    records = []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if folder.is_dir():
            records += [(path, label) for path in sorted(folder.rglob("*")) if is_image_file(path, split_dir)]
    return records


def tensor_transforms(auto_augment: str | None, random_erase: float) -> v2.Compose | None:
    """torchvision's policies on the uint8 tensor: TrivialAugmentWide (``ta_wide``), random erasing."""
    steps = []
    if auto_augment:
        if auto_augment not in AUTO_AUGMENT:
            raise ValueError(f"dataset.auto_augment={auto_augment!r} must be null or one of {AUTO_AUGMENT}")
        steps.append(v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR))
    if random_erase:
        steps.append(v2.RandomErasing(p=random_erase, value=list(IMAGENET_MEAN_PIXEL)))
    return v2.Compose(steps) if steps else None


class ClassificationDataset(Dataset):
    """Decoded, augmented images with their class index.

    ``tensor_transforms`` draw from torch's generator, seeded per item from the pipeline's generator,
    which the training loader seeds per sample: results do not depend on the worker.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        class_names: Sequence[str],
        transforms: Pipeline,
        tensor_transforms: Callable | None = None,
        source: str = "",
    ) -> None:
        self.records, self.class_names = records, list(class_names)
        self.transforms, self.tensor_transforms = transforms, tensor_transforms
        self.source = source
        self.max_pixels = MAX_PIXELS

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        path, label = self.records[index]
        image = read_rgb(path, self.max_pixels)
        if self.transforms is not None:  # None: the file as it is (``unaugmented``)
            image = self.transforms(image=image)["image"]
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        if self.tensor_transforms is not None:
            seed = pipeline_seed(self.transforms)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                tensor = self.tensor_transforms(tensor)
        return tensor, {"label": label, "image_id": index, "file": str(path)}


def collate_classification(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


class ClassificationDataModule(TaskDataModule):
    """Augmentation, loaders and evaluation inputs of every classification dataset; subclasses list
    each split's records (``_split_records``) and the class names (``_read_metadata``)."""

    collate_fn = staticmethod(collate_classification)

    def __init__(
        self,
        *,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        crop_size: int = 224,
        val_resize: int = 256,
        val_crop_size: int | None = None,
        scale_range: Sequence[float] = (0.08, 1.0),
        hflip: bool = True,
        auto_augment: str | None = None,
        random_erase: float = 0.0,
        **options,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, **options)
        self.crop_size, self.val_resize, self.val_crop_size = crop_size, val_resize, val_crop_size or crop_size
        self.scale_range, self.hflip = tuple(scale_range), hflip
        self.tensor_transforms = tensor_transforms(auto_augment, random_erase)  # checked before any data is read

    def _split_records(self, split: str) -> tuple[list[ImageRecord], str]:  # pragma: no cover - abstract
        """The records of ``split`` (train or val) and a description of where they come from."""
        raise NotImplementedError

    def _read_metadata(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    @cached_property
    def class_names(self) -> list[str]:
        names = list(self._read_metadata())
        if not names:
            raise DatasetError(f"{self._describe()} has no class folder")
        return names

    def _describe(self) -> str:
        return type(self).__name__

    @cached_property
    def _records(self) -> dict[str, tuple[list[ImageRecord], str]]:
        return {split: self._split_records(split) for split in ("train", "val")}

    def _good_records(self, split: str, *, report: bool) -> tuple[list[ImageRecord], str]:
        records, source = self._records[split]
        if not records:
            raise DatasetError(f"{source} holds no image file")
        keep = self.good_positions([(path, None, "") for path, _ in records], f"{source} ({split})", report=report)
        return [records[i] for i in keep], source

    def _prepare(self) -> None:
        for split in ("train", "val"):
            self._good_records(split, report=True)

    def _setup(self) -> None:
        for split in ("train", "val"):
            records, source = self._good_records(split, report=False)
            train = split == "train"
            transforms = classification_transforms(
                train=train,
                crop_size=self.crop_size,
                val_resize=self.val_resize,
                val_crop_size=self.val_crop_size,
                scale_range=self.scale_range,
                hflip=self.hflip,
            )
            dataset = ClassificationDataset(
                records, self.class_names, transforms, self.tensor_transforms if train else None, source
            )
            dataset.max_pixels = self.max_pixels
            setattr(self, f"{split}_set", dataset)
        present = {label for _, label in self.train_set.records}
        empty = [name for k, name in enumerate(self.class_names) if k not in present]
        if empty:
            log.warning("%d classes have no training image: %s", len(empty), empty[:10])

    def inspect(self, *, read_images: bool = True, max_pixels: int = MAX_PIXELS) -> tuple[list[Finding], list[str]]:
        """The dataset doctor's report: layout problems and every unusable image of both splits."""
        findings: list[Finding] = []
        for split in ("train", "val"):
            try:
                records, source = self._split_records(split)
            except (FileNotFoundError, ValueError) as err:
                findings.append(Finding(ERROR, "layout", str(err)))
                continue
            if not records:
                findings.append(Finding(ERROR, "layout", f"{source} holds no image file"))
            items = [(path, None, f" ({self.class_names[label]})") for path, label in records]
            if read_images:  # decoded by the start-up check's process pool
                bad = find_bad_images(items, max_pixels=max_pixels)
            else:
                headers = (
                    (i, image_file_problem(path, decode=False, max_pixels=max_pixels))
                    for i, (path, _, _) in enumerate(items)
                )
                bad = {i: problem for i, problem in headers if problem}
            findings += [
                Finding(ERROR, "image file", f"{items[i][0]}{items[i][2]} is {problem}")
                for i, problem in sorted(bad.items())
            ]
        try:
            return findings, self.class_names
        except (FileNotFoundError, ValueError):
            return findings, []

    def inference_preprocessing(self) -> dict:
        return {"resize_shorter": self.val_resize, "center_crop": self.val_crop_size}

    def evaluation_inputs(self) -> dict:
        return {"class_names": self.class_names}


class ImageFolderDataModule(ClassificationDataModule):
    """``root/train/<class>/...`` and ``root/val/<class>/...``: the training split's folders are the
    classes (sorted by name; any characters), images may sit in subfolders of a class folder."""

    def __init__(self, root: str | Path, *, train_dir: str = "train", val_dir: str = "val", **options) -> None:
        super().__init__(**options)
        self.root = Path(root).expanduser()
        self.split_dirs = {"train": train_dir, "val": val_dir}

    def _split_dir(self, split: str) -> Path:
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"dataset.root={self.root} does not exist; expected {self.split_dirs['train']}/<class>/ and "
                f"{self.split_dirs['val']}/<class>/ folders in it"
            )
        folder = self.image_root / self.split_dirs[split]
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} not found (dataset.root={self.root}); expected the {split} split there, one folder per "
                f"class, or set dataset.{split}_dir"
            )
        return folder

    @property
    def image_root(self) -> Path:
        """The folder holding the split folders."""
        return self.root

    def _describe(self) -> str:
        return str(self._split_dir("train"))

    def _read_metadata(self) -> list[str]:
        return class_folders(self._split_dir("train"))

    def _split_records(self, split: str) -> tuple[list[ImageRecord], str]:
        folder = self._split_dir(split)
        return folder_records(folder, self.class_names), str(folder)
