"""ILSVRC2012 (ImageNet-1k) in the layout it is distributed in.

``root`` holds ``train/<wnid>/*.JPEG`` and ``val/``, either sorted into ``val/<wnid>/`` folders or
flat (``val/ILSVRC2012_val_00000001.JPEG`` ...) with the labels in ``LOC_val_solution.csv``
(``ImageId,PredictionString``; the first word of the prediction string is the wnid). Class names
come from ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``). The Kaggle download, with
the images under ``ILSVRC/Data/CLS-LOC/`` and both files at its top, is read as it is.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from functools import cached_property
from pathlib import Path

from tasks.data.classification import ImageFolderDataModule, ImageRecord, class_folders, folder_records
from tasks.data.doctor import DatasetError
from tasks.data.images import is_image_file

log = logging.getLogger(__name__)

SYNSET_MAPPING = "LOC_synset_mapping.txt"
VAL_SOLUTION = "LOC_val_solution.csv"
KAGGLE_IMAGES = Path("ILSVRC/Data/CLS-LOC")


def read_synset_mapping(path: Path) -> dict[str, str]:
    """wnid -> its first name; a name two synsets share (``crane``: bird and machine) gets the wnid
    appended, so every class name is unique."""
    names = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, words = line.strip().partition(" ")
        if not wnid.startswith("n") or not words:
            raise DatasetError(f"{path}, line {number}: {line!r} is not '<wnid> <names>' (e.g. 'n01440764 tench')")
        names[wnid] = words.split(",")[0].strip()
    shared = {name for name, count in Counter(names.values()).items() if count > 1}
    return {wnid: f"{name} ({wnid})" if name in shared else name for wnid, name in names.items()}


def read_val_solution(path: Path) -> dict[str, str]:
    """Image id (file name without suffix) -> wnid, from ``LOC_val_solution.csv``."""
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
            raise DatasetError(f"{path} has columns {reader.fieldnames}, expected ImageId,PredictionString")
        labels = {}
        for row in reader:
            words = row["PredictionString"].split()
            if not words:
                raise DatasetError(f"{path}: image {row['ImageId']} has an empty PredictionString")
            labels[row["ImageId"]] = words[0]
    return labels


class ImageNetDataModule(ImageFolderDataModule):
    """The wnid folders of ``train`` are the classes (sorted, as torchvision orders them); their
    names, read from the synset mapping, label reports and the confusion matrix."""

    @property
    def image_root(self) -> Path:
        kaggle = self.root / KAGGLE_IMAGES
        return kaggle if kaggle.is_dir() else self.root

    def _metadata_file(self, name: str) -> Path | None:
        for folder in (self.root, self.image_root):
            if (folder / name).is_file():
                return folder / name
        return None

    @cached_property
    def wnids(self) -> list[str]:
        return class_folders(self._split_dir("train"))

    def _read_metadata(self) -> list[str]:
        mapping_file = self._metadata_file(SYNSET_MAPPING)
        if mapping_file is None:
            log.warning("%s not found in %s: classes are named by their wnids", SYNSET_MAPPING, self.root)
            return self.wnids
        mapping = read_synset_mapping(mapping_file)
        return [mapping.get(wnid, wnid) for wnid in self.wnids]

    def _split_records(self, split: str) -> tuple[list[ImageRecord], str]:
        folder = self._split_dir(split)
        if split == "train" or class_folders(folder):
            return folder_records(folder, self.wnids), str(folder)
        return self._flat_val_records(folder)

    def _flat_val_records(self, folder: Path) -> tuple[list[ImageRecord], str]:
        solution = self._metadata_file(VAL_SOLUTION)
        if solution is None:
            raise FileNotFoundError(
                f"{folder} holds no class folders and {VAL_SOLUTION} is not in {self.root}: the flat "
                f"validation images need it for their labels (or sort them into val/<wnid>/ folders)"
            )
        labels = read_val_solution(solution)
        files = {path.stem: path for path in sorted(folder.iterdir()) if is_image_file(path, folder)}
        unlabelled = sorted(set(files) - set(labels))
        if unlabelled:
            raise DatasetError(
                f"{len(unlabelled)} images in {folder} have no row in {solution} (e.g. {unlabelled[:3]}): "
                "is it the ILSVRC2012 validation csv? Remove them or add their labels"
            )
        index = {wnid: k for k, wnid in enumerate(self.wnids)}
        unknown = sorted({wnid for wnid in labels.values() if wnid not in index})
        if unknown:
            raise DatasetError(f"{solution} labels images with wnids that have no train/ folder: {unknown[:10]}")
        # a listed image without its file is kept: the start-up check reports it as missing
        records = [
            (files.get(image_id, folder / f"{image_id}.JPEG"), index[labels[image_id]]) for image_id in sorted(labels)
        ]
        return records, f"{folder} ({solution.name})"
