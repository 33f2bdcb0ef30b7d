"""A folder of images and Pascal VOC XML files, as LabelImg, CVAT and many exports leave it: no
ImageSets, the XML files beside the images or in ``annotations/`` beside ``images/``.

An XML file describes the image of the same stem, whatever its ``<filename>`` says (LabelImg
records ``.tif`` for a ``.png`` it converted; exports rename files): ``photo_12.xml`` pairs with
``photo_12.jpg``, ``.png``, ``.tif``, ... in any case.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from tasks.common.progress import progress
from tasks.data.doctor import ERROR, INFO, Finding
from tasks.data.formats.labelled_images import LabelledImage
from tasks.data.formats.labelled_module import LabelledDataModule
from tasks.data.formats.voc import read_labelled_xml, zero_based_hint
from tasks.data.images import is_hidden, is_image_file


def _folders(folder: Path) -> tuple[Path, Path]:
    """(image folder, XML folder): ``images/`` and ``annotations/`` (or ``Annotations/``) when both
    exist, else the folder itself for both."""
    for image_dir, xml_dir in (("images", "annotations"), ("JPEGImages", "Annotations"), ("images", "Annotations")):
        if (folder / image_dir).is_dir() and (folder / xml_dir).is_dir():
            return folder / image_dir, folder / xml_dir
    return folder, folder


def read_voc_folder(folder: Path, root: Path, *, one_based: bool) -> tuple[list[LabelledImage], list[Finding]]:
    """Every XML file under ``folder`` (recursively) with its image; images without an XML file are
    not annotated (left out, counted in a finding), other files are ignored."""
    image_dir, xml_dir = _folders(folder)
    by_stem: dict[Path, list[Path]] = defaultdict(list)  # (folder relative to image_dir) / stem -> image files
    for path in sorted(image_dir.rglob("*")):
        if is_image_file(path, image_dir):
            by_stem[path.relative_to(image_dir).with_suffix("")].append(path)
    xml_files = sorted(p for p in xml_dir.rglob("*") if p.suffix.lower() == ".xml" and not is_hidden(p, xml_dir))
    images, findings, paired = [], [], set()
    for xml_path in progress(xml_files, len(xml_files), f"reading the XML files of {xml_dir}"):
        stem = xml_path.relative_to(xml_dir).with_suffix("")
        candidates = by_stem.get(stem, [])
        if len(candidates) != 1:
            problem = "no image" if not candidates else f"{len(candidates)} images ({[p.name for p in candidates]})"
            message = f"{xml_path} has {problem} of the same name in {image_dir / stem.parent}"
            findings.append(Finding(ERROR, "annotation without image", message))
            continue
        paired.add(stem)
        image = LabelledImage(candidates[0], candidates[0].relative_to(root).as_posix(), xml_path)
        read_labelled_xml(image, one_based=one_based)
        images.append(image)
    unlabelled = sorted(set(by_stem) - paired)
    if unlabelled:
        examples = ", ".join(str(by_stem[s][0]) for s in unlabelled[:3])
        message = f"{len(unlabelled)} images under {image_dir} have no XML file and are left out, e.g. {examples}"
        findings.append(Finding(INFO, "image without XML", message))
    return images, findings + (zero_based_hint(images) if one_based else [])


class VocFolderDataModule(LabelledDataModule):
    """Images and VOC XML files under ``root``: ``train_dir`` (default: ``root`` itself) and
    ``val_dir`` (default: none, and ``val_fraction`` draws the validation images), each holding the
    files side by side or in ``images/`` + ``annotations/``. ``.jpg``, ``.png``, ``.tif``, ...
    images; float coordinates; ``one_based``: whether the XML counts pixels from 1 (VOC's own
    files; ``false`` for the many tools that count from 0)."""

    format_name = "a folder of images and Pascal VOC XML files (side by side, or images/ and annotations/)"

    def __init__(
        self,
        root: str | Path,
        *,
        train_dir: str = ".",
        val_dir: str | None = None,
        one_based: bool = True,
        class_names: Sequence[str] | None = None,
        **options,
    ) -> None:
        super().__init__(root, class_names=class_names, **options)
        self.dirs = {"train": train_dir, "val": val_dir}
        self.one_based = one_based

    def _read(self, split: str) -> tuple[list[LabelledImage], list[Finding]] | None:
        if self.dirs[split] is None:
            return None
        folder = self.root / self.dirs[split]
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset.{split}_dir={self.dirs[split]}: {folder} is not a folder")
        images, findings = read_voc_folder(folder, self.root, one_based=self.one_based)
        if not images and not findings:
            raise FileNotFoundError(f"{folder} holds no Pascal VOC XML files (expected {self.format_name})")
        return images, findings
