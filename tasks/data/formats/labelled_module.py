"""The data module shared by formats that describe images one label file at a time (a folder of
VOC XML files, the YOLO layout): class names from the config or the files, ``class_map``, and a
seeded validation split where the data has none."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from tasks.data.augment import Pipeline
from tasks.data.detection import DetectionDataModule
from tasks.data.detection_dataset import DetectionDataset
from tasks.data.doctor import ERROR, Finding, raise_on_errors
from tasks.data.formats.labelled_images import (
    LabelledImage,
    collect_class_names,
    fraction_split,
    labelled_findings,
    labelled_index,
    polygon_findings,
    read_split,
    rename_classes,
    split_names,
    unknown_class_findings,
    write_split,
)
from tasks.data.ground_truth import coco_ground_truth
from tasks.data.images import MAX_PIXELS

log = logging.getLogger(__name__)


class LabelledDataModule(DetectionDataModule):
    """Subclasses read a split's images and objects (``_read``: None where the data has no such
    split) and name the format (``format_name``); the rest is shared.

    ``class_names``: the label order (None: every name the files use, sorted); ``class_map``
    renames or merges names first; ``val_fraction`` draws a validation split with ``split_seed``
    when the data has none, written to ``split_file`` and read back from it when it exists.
    """

    format_name = "labelled images"
    has_masks = False  # whether the format carries instance masks

    def __init__(
        self,
        root: str | Path,
        *,
        class_names: Sequence[str] | None = None,
        class_map: Mapping[str, str] | None = None,
        val_fraction: float | None = None,
        split_seed: int = 0,
        split_file: str | Path | None = None,
        use_difficult: bool = False,
        **options,
    ) -> None:
        super().__init__(**options)
        self.root = Path(root).expanduser()
        self.given_class_names = list(class_names) if class_names is not None else None
        self.class_map = dict(class_map or {})
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.split_file = Path(split_file).expanduser() if split_file else None
        self.use_difficult = use_difficult
        self._splits: dict[str, tuple[list[LabelledImage], list[Finding]]] | None = None
        self._drawn: dict | None = None  # a validation split drawn (or read back): checkpoints record it
        self._recorded: dict | None = None  # the split a checkpoint recorded, which wins over a new draw

    # -- what a format provides ----------------------------------------------------------------
    def _read(self, split: str) -> tuple[list[LabelledImage], list[Finding]] | None:  # pragma: no cover
        """The images of ``split`` (train or val) with their objects, and the layout's findings;
        None when the data has no such split."""
        raise NotImplementedError

    def _layout_findings(self, images: Sequence[LabelledImage]) -> list[Finding]:
        """Findings about the whole layout once both splits are read (e.g. label files no image reads)."""
        return []

    def _labels_searched(self, images: Sequence[LabelledImage]) -> str:
        """Where the format looked for the labels of ``images`` (named when none were found)."""
        return f"annotations were looked for beside the images under {self.root}"

    @property
    def image_root(self) -> Path:
        """The folder the images' ``file_name``s are relative to."""
        return self.root

    # -- the splits ----------------------------------------------------------------------------
    def splits(self) -> dict[str, tuple[list[LabelledImage], list[Finding]]]:
        """Both splits read once per process, classes renamed, validation drawn where needed."""
        if self._splits is None:
            if not self.root.is_dir():
                raise FileNotFoundError(f"dataset.root={self.root} does not exist; expected {self.format_name}")
            train, val = self._read("train"), self._read("val")
            if train is None:
                raise FileNotFoundError(f"dataset.root={self.root} has no training images ({self.format_name})")
            if val is None:
                train, val = self._draw_validation(*train)
            elif self.val_fraction:
                log.info("the data has its own validation split: dataset.val_fraction is not used")
            for images, _ in (train, val):
                rename_classes(images, self.class_map)
            train = (train[0], train[1] + self._layout_findings(train[0] + val[0]) + self._no_objects(train[0]))
            self._splits = {"train": train, "val": val}
        return self._splits

    def _no_objects(self, images: Sequence[LabelledImage]) -> list[Finding]:
        """A training split without a single object would train a detector of background only."""
        if any(image.objects for image in images):
            return []
        message = (
            f"no training image has an object ({len(images)} images under {self.root}): {self._labels_searched(images)}"
        )
        return [Finding(ERROR, "no objects", message)]

    def _draw_validation(self, images: list[LabelledImage], findings: list[Finding]) -> tuple:
        if not self.val_fraction:
            raise ValueError(
                f"dataset.root={self.root} has no validation split; pass dataset.val_fraction=0.2 to hold out "
                "a fifth of the images (a seeded split, written to the run directory)"
            )
        names = [image.file_name for image in images]
        if self._recorded is not None:  # evaluation, calibration or a resume: the training run's split
            val_names = split_names(self._recorded, names, "the checkpoint's split")
            log.info("validation images as the checkpoint recorded them: %d of %d", len(val_names), len(names))
        elif self.split_file is not None and self.split_file.is_file():
            val_names = read_split(self.split_file, names)
            log.info("validation images read from %s: %d of %d", self.split_file, len(val_names), len(names))
        else:
            val_names = fraction_split(names, self.val_fraction, self.split_seed)
            if self.split_file is not None:
                write_split(
                    self.split_file, val_names, set(names) - val_names, fraction=self.val_fraction, seed=self.split_seed
                )
            log.info(
                "validation: %d of %d images drawn with dataset.val_fraction=%s, split_seed=%d (written to %s)",
                len(val_names), len(names), self.val_fraction, self.split_seed, self.split_file,
            )  # fmt: skip
        self._drawn = {"train": sorted(set(names) - val_names), "val": sorted(val_names)}
        train = [image for image in images if image.file_name not in val_names]
        val = [image for image in images if image.file_name in val_names]
        return (train, findings), (val, [])

    # -- the split in checkpoints --------------------------------------------------------------
    def state_dict(self) -> dict:
        """The training position, and a drawn validation split: a later evaluation, calibration or resume
        of this checkpoint validates on the same images whatever its split file or seed."""
        state = super().state_dict()
        if self._drawn is not None:
            state["split"] = self._drawn
        return state

    def load_state_dict(self, state: dict) -> None:
        """Before the data is read: the checkpoint's split is used. After (Lightning restores a resumed
        run's states once the data is set up): it must be the split in use."""
        super().load_state_dict(state)
        recorded = state.get("split")
        if recorded is None:
            return
        if self._splits is None:
            self._recorded = recorded
            return
        if self._drawn is not None and set(self._drawn["val"]) != set(recorded["val"]):
            moved = sorted(set(self._drawn["val"]) ^ set(recorded["val"]))
            raise ValueError(
                f"this run's validation split of {self.root} differs from the checkpoint's ({len(moved)} images moved "
                f"between training and validation, e.g. {moved[:3]}): resume with the checkpoint's "
                "dataset.split_file, split_seed and val_fraction"
            )

    def _read_metadata(self) -> tuple[list[int], list[str]]:
        names = self.given_class_names
        if names is None:
            names = collect_class_names([image for images, _ in self.splits().values() for image in images])
            if not names:
                raise ValueError(f"dataset.root={self.root}: the label files name no class; set dataset.class_names")
            log.info("class names taken from the files (dataset.class_names=null): %s", names)
        return list(range(1, len(names) + 1)), list(names)

    def _build_split(self, split: str, transforms: Pipeline | None, *, prepared: bool) -> DetectionDataset:
        if self.masks and not self.has_masks:
            raise ValueError(
                f"{self.format_name} carries no instance masks; instance segmentation reads polygons "
                "(dataset=yolo with polygon rows, or COCO-format jsons: dataset=coco_custom)"
            )
        images, layout_findings = self.splits()[split]
        category_ids, class_names = self._metadata
        source = f"{self.root} ({self.format_name}, {split})"
        every_image = [image for split_images, _ in self.splits().values() for image in split_images]
        findings = layout_findings + labelled_findings(images, class_names, read_images=False, classes=False)
        findings += unknown_class_findings(every_image, class_names)  # one finding per name, over both splits
        if self.masks:
            findings += polygon_findings(images)
        raise_on_errors([f for f in findings if f.check != "image file"], source)  # the caller checks images
        readable = self._readable(images, source)
        use_difficult = self.use_difficult and split == "train"
        index = labelled_index(readable, class_names, source, use_difficult=use_difficult, masks=self.masks)
        return DetectionDataset(
            index,
            self.image_root,
            category_ids=category_ids,
            class_names=class_names,
            ground_truth=lambda: coco_ground_truth(index, category_ids, class_names),
            transforms=transforms,
            source=source,
        )

    def _readable(self, images: list[LabelledImage], source: str) -> list[LabelledImage]:
        """The images whose size could be read (a format without sizes in its label files reads each
        image's header); the others stop the run, or are left out with ``skip_bad_images``."""
        unreadable = [str(image.image_path) for image in images if image.size is None and image.error is None]
        if unreadable and not self.skip_bad_images:
            findings = [Finding(ERROR, "image file", f"{path}: its header cannot be read") for path in unreadable]
            raise_on_errors(findings, source)
        if unreadable:
            log.warning("%s: left out %d images whose header cannot be read: %s", source, len(unreadable), unreadable)
        return [image for image in images if image.size is not None]

    def inspect(self, *, read_images: bool = True, max_pixels: int = MAX_PIXELS) -> tuple[list[Finding], list[str]]:
        splits = self.splits()
        class_names = self._metadata[1]
        findings = []
        for images, layout_findings in splits.values():
            findings += layout_findings + labelled_findings(
                images, class_names, read_images=read_images, max_pixels=max_pixels, classes=False
            )
        every_image = [image for images, _ in splits.values() for image in images]
        return findings + unknown_class_findings(every_image, class_names), class_names
