"""The data module of COCO panoptic data (``tasks.data.formats.coco_panoptic``)."""

from __future__ import annotations

import contextlib
from functools import cached_property
from pathlib import Path

from tasks.data.augment import Pipeline
from tasks.data.detection import DetectionDataModule
from tasks.data.doctor import ERROR, INFO, Finding
from tasks.data.formats.coco_panoptic import CocoPanoptic, PanopticCategories, inspect_panoptic, read_panoptic_json
from tasks.data.images import MAX_PIXELS


def default_png_dir(annotations: str) -> str:
    """COCO's layout: ``annotations/panoptic_val2017.json`` beside its PNG folder ``annotations/panoptic_val2017/``."""
    return str(Path(annotations).with_suffix(""))


class CocoPanopticDataModule(DetectionDataModule):
    """Train/val splits as image folders, panoptic jsons and PNG folders, relative to ``root`` (absolute
    paths as they are; a PNG folder left null is the json's path without ``.json``, as COCO ships it).
    The detector learns the things (labels 1..K, ``class_names``), the semantic head the stuff
    (``stuff_names``) and one class for all things."""

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        train_images: str = "train2017",
        train_annotations: str = "annotations/panoptic_train2017.json",
        train_panoptic: str | None = None,
        val_images: str = "val2017",
        val_annotations: str = "annotations/panoptic_val2017.json",
        val_panoptic: str | None = None,
        **options,
    ) -> None:
        options["masks"] = True  # the things' masks come from the PNGs whatever the task asks
        tile = options.get("tile") or {}
        if tile.get("size"):
            raise ValueError(
                f"dataset.tile.size={tile['size']}: panoptic data trains on whole images (a tile would cut the "
                "stuff and the semantic target); set dataset.tile.size=null"
            )
        super().__init__(**options)
        self.root = Path(root).expanduser() if root else Path()
        self.splits = {
            "train": (train_images, train_annotations, train_panoptic or default_png_dir(train_annotations)),
            "val": (val_images, val_annotations, val_panoptic or default_png_dir(val_annotations)),
        }

    def _split_paths(self, split: str) -> tuple[Path, Path, Path]:
        images, annotations, pngs = (self.root / p for p in self.splits[split])
        for path, key, what in (
            (annotations, "annotations", "panoptic json"),
            (images, "images", "image folder"),
            (pngs, "panoptic", "folder of panoptic PNGs"),
        ):
            if not path.exists():
                raise FileNotFoundError(
                    f"{split} {what} {path} not found (dataset.root={self.root}); expected COCO panoptic layout "
                    f"there, or set dataset.{split}_{key}"
                )
        return images, annotations, pngs

    def _build_split(self, split: str, transforms: Pipeline | None, *, prepared: bool) -> CocoPanoptic:
        images, annotations, pngs = self._split_paths(split)
        return CocoPanoptic(images, annotations, pngs, transforms, check_files=not prepared)

    def _setup(self) -> None:
        super()._setup()
        problem = self._category_mismatch(self.train_set.categories, self.val_set.categories)
        if problem:
            raise ValueError(problem)

    def _category_mismatch(self, train: PanopticCategories, val: PanopticCategories) -> str | None:
        """Train and val must name the same things and stuff with the same ids: the semantic head's classes
        and the evaluation's categories are the stuff's order."""
        if train == val:
            return None
        paths = {split: self._split_paths(split)[1] for split in self.splits}
        return (
            f"train and val declare different categories: {paths['train']} has things {list(train.thing_names)} "
            f"(ids {list(train.thing_ids)}) and stuff {list(train.stuff_names)} (ids {list(train.stuff_ids)}), "
            f"{paths['val']} things {list(val.thing_names)} (ids {list(val.thing_ids)}) and stuff "
            f"{list(val.stuff_names)} (ids {list(val.stuff_ids)}); give both jsons the same categories"
        )

    @cached_property
    def categories(self) -> PanopticCategories:
        _, annotations, _ = self._split_paths("val")
        return PanopticCategories.from_json(read_panoptic_json(annotations)["categories"], str(annotations))

    def _read_metadata(self) -> tuple[list[int], list[str]]:
        return list(self.categories.thing_ids), list(self.categories.thing_names)

    @property
    def stuff_names(self) -> list[str]:
        return list(self.categories.stuff_names)

    def model_metadata(self) -> dict:
        return {**super().model_metadata(), "stuff_names": self.stuff_names}

    def prediction_metadata(self) -> dict:
        """What predict.py names the stuff segments with (checkpoints keep it)."""
        return {"stuff_names": self.stuff_names, "stuff_category_ids": list(self.categories.stuff_ids)}

    def evaluation_inputs(self) -> dict:
        """The validation split's PNGs and segments (read per image by the process that evaluates),
        and its categories."""
        self.setup()
        return {"ground_truth": self.val_set.ground_truth, "categories": self.categories}

    def inspect(self, *, read_images: bool = True, max_pixels: int = MAX_PIXELS) -> tuple[list[Finding], list[str]]:
        """Every doctor finding of both splits (``inspect_panoptic``), the two splits' categories compared,
        and the thing classes."""
        findings, class_names, categories = [], [], {}
        for split in self.splits:
            try:
                images, annotations, pngs = self._split_paths(split)
                dataset = read_panoptic_json(annotations)
            except (FileNotFoundError, ValueError) as err:
                findings.append(Finding(ERROR, "layout", str(err)))
                continue
            files = "decode" if read_images else "exist"
            findings += inspect_panoptic(dataset, images, pngs, str(annotations), files=files, max_pixels=max_pixels)
            with contextlib.suppress(ValueError):  # reported among the findings
                categories[split] = PanopticCategories.from_json(dataset["categories"], str(annotations))
        if len(categories) == 2 and (problem := self._category_mismatch(categories["train"], categories["val"])):
            findings.append(Finding(ERROR, "categories", problem))
        if categories:
            first = next(iter(categories.values()))
            class_names = list(first.thing_names)  # what the detector's num_classes counts
            stuff = f"{len(first.stuff_names)} stuff classes: {list(first.stuff_names)}"
            findings.append(Finding(INFO, "stuff", stuff))
        return findings, class_names
