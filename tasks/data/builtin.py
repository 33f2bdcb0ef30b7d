"""The built-in shapes data, generated on first use (``tasks/data/shapes.py``) in the layout each
task reads: COCO 2017 for detection and instance segmentation, VOCdevkit for segmentation, class
folders for classification."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from tasks.data.classification import ImageFolderDataModule
from tasks.data.doctor import Finding
from tasks.data.formats.coco import CocoDataModule
from tasks.data.formats.coco_panoptic import PanopticCategories
from tasks.data.formats.coco_panoptic_module import CocoPanopticDataModule
from tasks.data.images import MAX_PIXELS
from tasks.data.segmentation import VocSegDataModule
from tasks.data.shapes import SHAPE_CLASSES, ShapesSpec, ensure_shapes, panoptic_categories, split_spec


class GeneratedShapes:
    """What every built-in shapes data module adds to its format's: the files generated in ``layout``
    (``ensure_shapes``: once, kept while the spec is unchanged) before the data is prepared (on one
    process while the others wait) or inspected by the doctor."""

    layout = "coco"
    root: Path
    spec: ShapesSpec

    def prepare_data(self) -> None:
        ensure_shapes(self.root, self.spec, layout=self.layout)
        super().prepare_data()

    def inspect(self, *, read_images: bool = True, max_pixels: int = MAX_PIXELS) -> tuple[list[Finding], list[str]]:
        ensure_shapes(self.root, self.spec, layout=self.layout)
        return super().inspect(read_images=read_images, max_pixels=max_pixels)


class ShapesDataModule(GeneratedShapes, CocoDataModule):
    """The COCO data module over the generated shapes folder (generated on first use, by
    ``prepare_data``: on one process while the others wait).

    Keyword options named like ``ShapesSpec`` fields (``num_train``, ``image_size``, ``seed``, ...)
    set the generation; the others go to ``CocoDataModule``.
    """

    def __init__(self, root: str | Path, **options) -> None:
        self.spec, loader_options = split_spec(options)
        super().__init__(root, **loader_options)

    def _read_metadata(self) -> tuple[list[int], list[str]]:
        return list(range(1, len(SHAPE_CLASSES) + 1)), list(SHAPE_CLASSES)


class ShapesSegDataModule(GeneratedShapes, VocSegDataModule):
    """The built-in shapes, generated on first use in VOC layout (background + 4 shape classes).

    Options named like ``ShapesSpec`` fields set the generation, as for detection's shapes.
    """

    layout = "voc"

    def __init__(self, root: str | Path, **options) -> None:
        spec, options = split_spec(options)
        options.setdefault("train_years", (2007, 2012))
        options.setdefault("val_years", (2007,))
        super().__init__(root, class_names=("background", *SHAPE_CLASSES), use_sbd=False, **options)
        self.spec = spec


class ShapesClsDataModule(GeneratedShapes, ImageFolderDataModule):
    """The built-in shapes, one shape an image, generated on first use in class folders. Options
    named like ``ShapesSpec`` fields set the generation, as for detection's shapes."""

    layout = "imagefolder"

    def __init__(self, root: str | Path, **options) -> None:
        self.spec, options = split_spec(options)
        super().__init__(root, **options)

    def _read_metadata(self) -> list[str]:
        return sorted(SHAPE_CLASSES)


class ShapesPanopticDataModule(GeneratedShapes, CocoPanopticDataModule):
    """The built-in shapes over stuff landscapes (sky, ground, water), generated on first use in COCO
    panoptic layout. Options named like ``ShapesSpec`` fields set the generation, as for detection's shapes."""

    layout = "coco_panoptic"

    def __init__(self, root: str | Path, **options) -> None:
        self.spec, options = split_spec(options)
        super().__init__(root, **options)

    @cached_property
    def categories(self) -> PanopticCategories:
        """Known before the data is generated (as the files will declare them)."""
        return PanopticCategories.from_json(panoptic_categories(), "the built-in shapes")
