"""The Ultralytics (YOLO) layout, what most annotation services export.

``data.yaml`` names the dataset folder (``path``, relative to the yaml's folder unless absolute),
the ``train`` and ``val`` images (folders, text files listing images, or lists of either) and the
class ``names`` (a list, or a dict ``{0: name, ...}``). Each image ``.../images/.../x.jpg`` has
its labels in ``.../labels/.../x.txt``: one object a row, ``class cx cy w h`` normalised to 0..1,
or a polygon ``class x1 y1 x2 y2 ...`` (an instance mask; its extent is the box). An empty label
file is an image without objects; so is a missing one (counted in the doctor's report).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path

import yaml
from PIL import Image

from tasks.common.progress import progress
from tasks.data.doctor import ERROR, INFO, WARNING, Finding
from tasks.data.formats.labelled_images import LabelledImage, LabelledObject
from tasks.data.formats.labelled_module import LabelledDataModule
from tasks.data.images import is_hidden, is_image_file, upright_size

log = logging.getLogger(__name__)


def read_data_yaml(path: Path) -> dict:
    """The yaml with ``path`` resolved and ``names`` as a list; errors name the file and the key."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the YOLO layout needs a data.yaml (path, train, val, names)")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(content, dict) or "train" not in content or "names" not in content:
        raise ValueError(f"{path} must be a mapping with at least 'train' and 'names' (and usually 'path', 'val')")
    names = content["names"]
    if isinstance(names, Mapping):
        ids = sorted(names)
        if ids != list(range(len(ids))):
            raise ValueError(f"{path}: names' keys must be the class ids 0..{len(ids) - 1}, found {ids}")
        names = [names[k] for k in ids]
    if not isinstance(names, list) or not names:
        raise ValueError(f"{path}: names must be a list of class names or a dict {{0: name, ...}}, found {names!r}")
    if "nc" in content and content["nc"] != len(names):
        raise ValueError(f"{path}: nc={content['nc']} but names lists {len(names)} classes")
    base = Path(content.get("path") or ".").expanduser()
    base = base if base.is_absolute() else path.parent / base
    return {**content, "path": base, "names": [str(n) for n in names]}


def _listed_images(base: Path, entry: str | list) -> list[Path]:
    """The images a ``train``/``val`` entry names: folders (searched recursively), text files
    of image paths, or a list of either."""
    images = []
    for item in entry if isinstance(entry, list) else [entry]:
        location = base / str(item)
        if location.is_dir():
            images += sorted(p for p in location.rglob("*") if is_image_file(p, location))
        elif location.is_file() and location.suffix == ".txt":
            lines = [line.strip() for line in location.read_text().splitlines() if line.strip()]
            images += [Path(line) if Path(line).is_absolute() else base / line for line in lines]
        else:
            raise FileNotFoundError(f"{location} (from data.yaml) is neither an image folder nor a .txt list")
    return images


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    if "images" not in parts:
        return image.with_suffix(".txt")
    last = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:last], "labels", *parts[last + 1 :]).with_suffix(".txt")


def parse_label_rows(text: str, path: Path, names: Sequence[str], size: tuple[int, int]) -> tuple[list, list]:
    """(objects, findings) of one label file; a row that cannot be used is an error finding."""
    width, height = size
    objects, findings = [], []
    for line_number, line in enumerate(text.splitlines(), 1):
        values = line.split()
        if not values:
            continue
        where = f"{path} line {line_number}"
        try:
            class_id, coords = int(values[0]), [float(v) for v in values[1:]]
        except ValueError:
            findings.append(Finding(ERROR, "label row", f"{where}: {line.strip()!r} is not numbers"))
            continue
        if not 0 <= class_id < len(names):
            message = (
                f"{where}: class id {class_id} is outside data.yaml's names (ids 0..{len(names) - 1}: {list(names)}); "
                "add the class to names or fix the row"
            )
            findings.append(Finding(ERROR, "class id", message))
            continue
        if len(coords) == 4:
            cx, cy, w, h = coords
            box, polygon = (
                [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height],
                None,
            )
        elif len(coords) >= 6 and len(coords) % 2 == 0:
            polygon = [v * (width if k % 2 == 0 else height) for k, v in enumerate(coords)]
            xs, ys = polygon[0::2], polygon[1::2]
            box = [min(xs), min(ys), max(xs), max(ys)]
        else:
            message = f"{where}: {len(values)} values; expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...'"
            findings.append(Finding(ERROR, "label row", message))
            continue
        if max(coords) > 1.5:
            message = f"{where}: coordinates {coords[:4]} exceed 1: YOLO rows are normalised by the image size"
            findings.append(Finding(ERROR, "label row", message))
            continue
        objects.append(LabelledObject(names[class_id], box, polygon=polygon, row=f"line {line_number}"))
    return objects, findings


def read_yolo_split(entry: str | list, base: Path, names: Sequence[str]) -> tuple[list[LabelledImage], list[Finding]]:
    images, findings, missing = [], [], []
    listed = _listed_images(base, entry)
    for image_path in progress(listed, len(listed), f"reading the YOLO labels of {entry}"):
        labels = label_path(image_path)
        file_name = image_path.relative_to(base).as_posix() if image_path.is_relative_to(base) else str(image_path)
        image = LabelledImage(image_path, file_name, labels if labels.is_file() else None)
        try:
            with Image.open(image_path) as opened:
                image.size = upright_size(opened)
        except OSError:  # the image check reports the file
            image.objects = None
            images.append(image)
            continue
        if image.annotation_path is None:
            missing.append(image_path)
        else:
            image.objects, problems = parse_label_rows(labels.read_text(), labels, names, image.size)
            findings += problems
        images.append(image)
    if missing:
        findings.append(missing_labels_finding(missing, len(listed)))
    return images, findings


def label_folders(images: Sequence[Path], shown: int = 3) -> str:
    """Where Ultralytics' rule looks for the labels of ``images``: their folders, the first few named."""
    folders = sorted({str(label_path(image).parent) for image in images})
    more = f" and {len(folders) - shown} more" if len(folders) > shown else ""
    return f"{folders[:shown]}{more}"


def missing_labels_finding(missing: Sequence[Path], listed: int) -> Finding:
    """Images without a label file are images without objects: a few are normal (info), most of a split
    point at labels the rule does not find (a warning, also logged, naming the folders searched)."""
    if 2 * len(missing) <= listed:
        examples = [str(p) for p in missing[:3]]
        message = f"{len(missing)} images have no label file (images without objects), e.g. {examples}"
        log.info(message)
        return Finding(INFO, "missing label file", message)
    message = (
        f"{len(missing)} of {listed} images have no label file and train as background: labels were looked for in "
        f"{label_folders(missing)} (the last 'images' folder of an image's path becomes 'labels', the suffix .txt). "
        "Check that the label folder is named 'labels' beside 'images'"
    )
    log.warning(message)
    return Finding(WARNING, "missing label file", message)


def stray_label_findings(base: Path, images: Sequence[LabelledImage]) -> list[Finding]:
    """Label files that no listed image reads (a renamed or deleted image, a typo)."""
    used = {image.annotation_path for image in images if image.annotation_path}
    labels = [p for p in base.rglob("*.txt") if "labels" in p.parts and not is_hidden(p, base)]
    stray = sorted(p for p in labels if p not in used)
    if not stray:
        return []
    message = f"{len(stray)} label files belong to no listed image, e.g. {[str(p) for p in stray[:3]]}"
    return [Finding(INFO, "label file without image", message)]


class YoloDataModule(LabelledDataModule):
    """The Ultralytics layout under ``root``: ``data.yaml`` (``data_yaml``, relative to ``root``)
    with ``images/<split>`` and ``labels/<split>``. Class names are the yaml's (``class_names``
    overrides them, ``class_map`` renames or merges them). Polygon rows give instance masks."""

    format_name = "the YOLO layout: data.yaml, images/<split>/ and labels/<split>/"
    has_masks = True

    def __init__(self, root: str | Path, *, data_yaml: str = "data.yaml", **options) -> None:
        super().__init__(root, **options)
        self.data_yaml = data_yaml

    @cached_property
    def data(self) -> dict:
        """``data.yaml``, read once."""
        return read_data_yaml(self.root / self.data_yaml)

    def _read(self, split: str) -> tuple[list[LabelledImage], list[Finding]] | None:
        data = self.data
        if not data.get(split):
            return None
        return read_yolo_split(data[split], data["path"], data["names"])

    def _layout_findings(self, images: Sequence[LabelledImage]) -> list[Finding]:
        return stray_label_findings(self.image_root, images)

    def _labels_searched(self, images: Sequence[LabelledImage]) -> str:
        folders = label_folders([image.image_path for image in images])
        return f"labels were looked for in {folders}, by Ultralytics' rule"

    @property
    def image_root(self) -> Path:
        return self.data["path"]

    def _read_metadata(self) -> tuple[list[int], list[str]]:
        if self.given_class_names is not None:
            return super()._read_metadata()
        names = list(dict.fromkeys(self.class_map.get(n, n) for n in self.data["names"]))  # merged ones once
        return list(range(1, len(names) + 1)), names
