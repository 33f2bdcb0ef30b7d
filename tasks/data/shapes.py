"""Built-in synthetic shapes dataset, written in real COCO 2017 layout and read back by the COCO loader.

Each image has a textured background (gradient, noise, clutter lines) and a few filled
shapes of varied class, size, colour and rotation; shapes may overlap but each keeps at
least ``min_visible`` of its area visible. Boxes and RLE masks describe the visible part.
Everything is a pure function of the spec, so the same seed gives the same files.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from tasks.data.detection_dataset import mask_box_xywh
from tasks.data.formats.coco_panoptic import id_to_rgb
from tasks.data.formats.palette import voc_palette

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
STUFF_CLASSES = ("sky", "ground", "water")  # the panoptic layout's background regions
SPEC_FILE = "shapes_spec.json"


@dataclass(frozen=True)
class ShapesSpec:
    num_train: int = 1000
    num_val: int = 200
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 5
    min_object_size: int = 12
    max_object_size: int = 56
    min_visible: float = 0.6
    rotation: float = 360.0  # shapes turn by a random angle in [0, rotation) degrees; 0: upright
    seed: int = 0

    def __post_init__(self) -> None:
        if not 4 <= self.min_object_size <= self.max_object_size <= self.image_size:
            raise ValueError(
                f"shapes object sizes must satisfy 4 <= min_object_size ({self.min_object_size}) <= "
                f"max_object_size ({self.max_object_size}) <= image_size ({self.image_size})"
            )
        if not 0 <= self.rotation <= 360:
            raise ValueError(f"shapes rotation ({self.rotation}) must be an angle range in degrees, 0 to 360")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 0 <= min_objects ({self.min_objects}) <= max_objects ({self.max_objects})")


def _shape_mask(kind: str, size: int, center: tuple[float, float], angle: float, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of one shape whose extent is about ``size`` pixels."""
    mask = np.zeros(shape, np.uint8)
    cx, cy = center
    if kind == "circle":
        cv2.circle(mask, (round(cx), round(cy)), max(2, round(size / 2)), 1, -1)
        return mask.astype(bool)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    r = size / 2
    if kind == "square":
        polygons = [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * r * 0.72]
    elif kind == "triangle":
        polygons = [np.array([[np.cos(a), np.sin(a)] for a in np.deg2rad([-90, 30, 150])]) * r]
    else:  # cross: two bars of a third of the extent
        bar = np.array([[-1, -1 / 3], [1, -1 / 3], [1, 1 / 3], [-1, 1 / 3]]) * r
        polygons = [bar, bar[:, ::-1]]
    for poly in polygons:
        points = poly @ rot.T + [cx, cy]
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    direction = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size] / size
    t = (np.cos(direction) * xs + np.sin(direction) * ys + 1) / 2
    image = a * (1 - t[..., None]) + b * t[..., None]
    image += rng.normal(0, rng.uniform(2, 12), image.shape)
    for _ in range(rng.integers(0, 4)):  # clutter that is not an object
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(image, tuple(map(int, p1)), tuple(map(int, p2)), rng.uniform(0, 255, 3).tolist(), 1)
    return image


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    mean = background.reshape(-1, 3).mean(0)
    for _ in range(50):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - mean) > 90:
            return colour
    return 255 - mean


def _stuff_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A landscape of stuff regions (``STUFF_CLASSES``): sky above a tilted horizon (a smooth gradient),
    ground below it (blotchy texture), and in half the images a band of water (horizontal waves) along
    the bottom. Returns the image and the map of each pixel's stuff index."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    horizon = rng.uniform(0.25, 0.6) * size + rng.uniform(-0.3, 0.3) * (xs - size / 2)
    stuff = np.where(ys < horizon, 0, 1)
    if rng.random() < 0.5:
        shore = horizon + rng.uniform(0.2, 0.4) * size + rng.uniform(-0.2, 0.2) * (xs - size / 2)
        stuff[ys >= shore] = 2
    top, bottom = rng.uniform([120, 150, 200], [200, 220, 255]), rng.uniform([60, 100, 170], [140, 180, 240])
    t = (ys / size)[..., None]
    sky = top * (1 - t) + bottom * t + rng.normal(0, 2, (size, size, 3))
    blotches = cv2.GaussianBlur(rng.normal(0, 40, (size, size)), (0, 0), 2.0)[..., None]
    ground = rng.uniform([70, 60, 20], [150, 130, 80]) + blotches + rng.normal(0, 6, (size, size, 3))
    waves = 30 * np.sin(2 * np.pi * ys / rng.uniform(5, 9) + 0.5 * np.sin(xs / rng.uniform(6, 12)))[..., None]
    water = rng.uniform([20, 50, 90], [60, 110, 160]) + waves + rng.normal(0, 3, (size, size, 3))
    image = np.choose(stuff[..., None], [sky, ground, water])
    return image, stuff


def render_image(
    rng: np.random.Generator, spec: ShapesSpec, only_class: int | None = None, *, stuff: bool = False
) -> tuple[np.ndarray, np.ndarray, list[int]] | tuple[np.ndarray, np.ndarray, list[int], np.ndarray]:
    """One image: (HxWx3 uint8, owner map with the index of the visible instance or -1, class per instance).
    ``only_class``: every shape of the image is of that class (classification). ``stuff``: the
    background is a landscape of stuff regions, whose map (stuff index per pixel) comes fourth."""
    size = spec.image_size
    regions = None
    if stuff:
        image, regions = _stuff_background(rng, size)
    else:
        image = _background(rng, size)
    owner = np.full((size, size), -1, np.int32)
    classes: list[int] = []
    full_areas: list[int] = []
    for _ in range(rng.integers(spec.min_objects, spec.max_objects + 1)):
        for _attempt in range(20):
            cls = int(rng.integers(len(SHAPE_CLASSES))) if only_class is None else only_class
            extent = float(np.exp(rng.uniform(np.log(spec.min_object_size), np.log(spec.max_object_size))))
            center = tuple(rng.uniform(extent * 0.3, size - extent * 0.3, 2))
            angle = rng.uniform(0, 2 * np.pi) * spec.rotation / 360  # drawn even when upright: same draws
            mask = _shape_mask(SHAPE_CLASSES[cls], round(extent), center, angle, owner.shape)
            candidate = owner.copy()
            candidate[mask] = len(classes)
            areas = np.bincount(candidate[candidate >= 0], minlength=len(classes) + 1)
            visible = areas[:-1] / np.maximum(full_areas, 1) if full_areas else np.ones(0)
            if mask.sum() >= 16 and (visible >= spec.min_visible).all():
                owner = candidate
                classes.append(cls)
                full_areas.append(int(mask.sum()))
                image[mask] = _contrasting_colour(rng, image)
                break
    image += rng.normal(0, 3, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return (image, owner, classes) if regions is None else (image, owner, classes, regions)


def _annotations(owner: np.ndarray, classes: list[int], image_id: int, first_id: int) -> list[dict]:
    rows = []
    for k, cls in enumerate(classes):
        visible = owner == k
        rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
        rows.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": cls + 1,
                "bbox": mask_box_xywh(visible),
                "area": int(visible.sum()),
                "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
                "iscrowd": 0,
            }
        )
    return rows


def _image_ids(spec: ShapesSpec):
    """(image_id, split) of every image: training images first, numbered from 1."""
    for split, first, count in (("train", 1, spec.num_train), ("val", spec.num_train + 1, spec.num_val)):
        for image_id in range(first, first + count):
            yield image_id, split


def _render_all(spec: ShapesSpec):
    """(image_id, split, image, owner map, classes) for every image of the spec."""
    for image_id, split in _image_ids(spec):
        yield (image_id, split, *render_image(np.random.default_rng([spec.seed, image_id]), spec))


def _write_coco(folder: Path, spec: ShapesSpec) -> None:
    """COCO 2017 layout: train2017/, val2017/, annotations/instances_{train,val}2017.json."""
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)]
    splits = {split: {"images": [], "annotations": []} for split in ("train", "val")}
    for image_id, split, image, owner, classes in _render_all(spec):
        content = splits[split]
        file_name = f"{image_id:012d}.png"
        (folder / f"{split}2017").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{split}2017" / file_name)
        content["images"].append(
            {"id": image_id, "file_name": file_name, "width": spec.image_size, "height": spec.image_size}
        )
        content["annotations"] += _annotations(owner, classes, image_id, first_id=len(content["annotations"]) + 1)
    (folder / "annotations").mkdir()
    for split, content in splits.items():
        info = {"description": "synthetic shapes", "version": "1.0"}
        full = {"info": info, "licenses": [], **content, "categories": categories}
        (folder / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(full))


STUFF_SEGMENT_BASE = 100  # stuff segment ids: 100 + stuff index; things: 1 + instance index


def _panoptic_segments(owner: np.ndarray, classes: list[int], regions: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """The segment-id map (a one-pixel void seam where stuff regions meet, as annotators leave them) and
    its ``segments_info``. Things are categories 1..4, stuff 5..7."""
    ids = np.where(owner >= 0, owner + 1, STUFF_SEGMENT_BASE + regions)
    seam = np.zeros(regions.shape, bool)
    seam[1:] |= regions[1:] != regions[:-1]
    seam[:, 1:] |= regions[:, 1:] != regions[:, :-1]
    ids[seam & (owner < 0)] = 0
    infos = []
    for segment_id in np.unique(ids[ids > 0]).tolist():
        pixels = ids == segment_id
        if segment_id < STUFF_SEGMENT_BASE:
            category_id = classes[segment_id - 1] + 1
        else:
            category_id = len(SHAPE_CLASSES) + segment_id - STUFF_SEGMENT_BASE + 1
        box = mask_box_xywh(pixels)
        infos.append(
            {"id": segment_id, "category_id": category_id, "area": int(pixels.sum()), "bbox": box, "iscrowd": 0}
        )
    return ids, infos


def panoptic_categories() -> list[dict]:
    """The panoptic layout's categories as its json declares them: things 1..4, stuff 5..7."""
    return [
        *({"id": i + 1, "name": n, "supercategory": "shape", "isthing": 1} for i, n in enumerate(SHAPE_CLASSES)),
        *(
            {"id": len(SHAPE_CLASSES) + i + 1, "name": n, "supercategory": "landscape", "isthing": 0}
            for i, n in enumerate(STUFF_CLASSES)
        ),
    ]


def _write_coco_panoptic(folder: Path, spec: ShapesSpec) -> None:
    """COCO panoptic layout: ``{train,val}2017/`` images over stuff landscapes, and
    ``annotations/panoptic_{train,val}2017.json`` with their PNG folders ``annotations/panoptic_{split}2017/``."""
    categories = panoptic_categories()
    splits = {split: {"images": [], "annotations": []} for split in ("train", "val")}
    for image_id, split in _image_ids(spec):
        image, owner, classes, regions = render_image(np.random.default_rng([spec.seed, image_id]), spec, stuff=True)
        file_name = f"{image_id:012d}.png"  # the image and its PNG of segments share the name
        for sub in (f"{split}2017", f"annotations/panoptic_{split}2017"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{split}2017" / file_name)
        ids, infos = _panoptic_segments(owner, classes, regions)
        Image.fromarray(id_to_rgb(ids)).save(folder / f"annotations/panoptic_{split}2017" / file_name)
        size = spec.image_size
        splits[split]["images"].append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        splits[split]["annotations"].append({"image_id": image_id, "file_name": file_name, "segments_info": infos})
    for split, content in splits.items():
        info = {"description": "synthetic shapes over stuff", "version": "1.0"}
        full = {"info": info, "licenses": [], **content, "categories": categories}
        (folder / "annotations" / f"panoptic_{split}2017.json").write_text(json.dumps(full))


def _voc_xml(file_name: str, size: int, owner: np.ndarray, classes: list[int], *, mark_difficult: bool = True) -> str:
    objects = []
    for k, cls in enumerate(classes):
        ys, xs = np.nonzero(owner == k)
        truncated = int(xs.min() == 0 or ys.min() == 0 or xs.max() == size - 1 or ys.max() == size - 1)
        difficult = int(mark_difficult and len(xs) < 100)  # tiny remnants are what VOC annotators mark difficult
        objects.append(
            f"<object><name>{SHAPE_CLASSES[cls]}</name><pose>Unspecified</pose><truncated>{truncated}</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{xs.min() + 1}</xmin><ymin>{ys.min() + 1}</ymin>"
            f"<xmax>{xs.max() + 1}</xmax><ymax>{ys.max() + 1}</ymax></bndbox></object>"
        )
    return (
        f"<annotation><folder>VOC</folder><filename>{file_name}</filename><size><width>{size}</width>"
        f"<height>{size}</height><depth>3</depth></size><segmented>1</segmented>{''.join(objects)}</annotation>"
    )


def _write_voc(folder: Path, spec: ShapesSpec) -> None:
    """VOCdevkit layout: half the training images in VOC2007, half in VOC2012, validation images in
    VOC2007; XML boxes, palette class PNGs (0 background, shape k is k+1, a void 255 border around
    each object). Detection image sets (Main): trainval / test; segmentation image sets: train / val."""
    image_sets: dict[tuple[str, str], list[str]] = {}
    palette = voc_palette()
    for image_id, split, image, owner, classes in _render_all(spec):
        if split == "val":
            year, image_set, file_id = "2007", "test", f"{image_id:06d}"
        elif image_id <= spec.num_train // 2:
            year, image_set, file_id = "2007", "trainval", f"{image_id:06d}"
        else:
            year, image_set, file_id = "2012", "trainval", f"2012_{image_id:06d}"
        base = folder / f"VOC{year}"
        for sub in ("Annotations", "JPEGImages", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(base / "JPEGImages" / f"{file_id}.jpg", quality=95)
        (base / "Annotations" / f"{file_id}.xml").write_text(
            _voc_xml(f"{file_id}.jpg", spec.image_size, owner, classes)
        )
        semantic = np.zeros(owner.shape, np.uint8)
        for k in range(len(classes)):
            visible = (owner == k).astype(np.uint8)
            semantic[cv2.dilate(visible, np.ones((3, 3), np.uint8)) > visible] = 255
        for k, cls in enumerate(classes):
            semantic[owner == k] = cls + 1
        mask = Image.fromarray(semantic, mode="P")
        mask.putpalette(palette)
        mask.save(base / "SegmentationClass" / f"{file_id}.png")
        image_sets.setdefault((year, "Main", image_set), []).append(file_id)
        image_sets.setdefault((year, "Segmentation", "val" if split == "val" else "train"), []).append(file_id)
    for (year, kind, image_set), ids in image_sets.items():
        (folder / f"VOC{year}" / "ImageSets" / kind / f"{image_set}.txt").write_text("\n".join(ids) + "\n")


def _write_imagefolder(folder: Path, spec: ShapesSpec) -> None:
    """Class folders for classification, ``{train,val}/<class>/<id>.png``: the classes take turns,
    and every shape of an image (``min_objects`` to ``max_objects`` of them) is of its class."""
    for image_id, split in _image_ids(spec):
        label = image_id % len(SHAPE_CLASSES)
        image, _, _ = render_image(np.random.default_rng([spec.seed, image_id]), spec, only_class=label)
        target = folder / split / SHAPE_CLASSES[label]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target / f"{image_id:06d}.png")


def _write_voc_folder(folder: Path, spec: ShapesSpec) -> None:
    """What a labelling tool leaves: ``{train,val}/images/<id>.png`` and ``{train,val}/annotations/<id>.xml``
    (1-based VOC boxes, no difficult flags), the same pixels and boxes as the COCO layout."""
    for image_id, split, image, owner, classes in _render_all(spec):
        for sub in ("images", "annotations"):
            (folder / split / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / split / "images" / f"{image_id:06d}.png")
        xml = _voc_xml(f"{image_id:06d}.png", spec.image_size, owner, classes, mark_difficult=False)
        (folder / split / "annotations" / f"{image_id:06d}.xml").write_text(xml)


def _yolo_row(cls: int, visible: np.ndarray, size: int, polygon: bool) -> str:
    """``class cx cy w h`` of the visible pixels' extent, or ``class x1 y1 ...`` of their outline
    (the largest contour, through its boundary pixels' centres), normalised."""
    if polygon:
        contours, _ = cv2.findContours(visible.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        points = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(float) + 0.5
        values = (points / size).ravel()
    else:
        ys, xs = np.nonzero(visible)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        values = np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]) / size
    return " ".join([str(cls), *map(repr, map(float, values))])


def _write_yolo(folder: Path, spec: ShapesSpec, polygons: bool = False) -> None:
    """The Ultralytics layout: ``data.yaml``, ``images/{train,val}/<id>.png``, ``labels/{train,val}/<id>.txt``
    with normalised ``class cx cy w h`` rows (full precision: the same boxes as the COCO layout), or
    with ``polygons`` each object's outline (instance segmentation)."""
    for image_id, split, image, owner, classes in _render_all(spec):
        for sub in ("images", "labels"):
            (folder / sub / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / "images" / split / f"{image_id:06d}.png")
        rows = [_yolo_row(cls, owner == k, spec.image_size, polygons) for k, cls in enumerate(classes)]
        (folder / "labels" / split / f"{image_id:06d}.txt").write_text("".join(f"{row}\n" for row in rows))
    names = "".join(f"  {k}: {name}\n" for k, name in enumerate(SHAPE_CLASSES))
    (folder / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names}")


LAYOUTS = {
    "coco": _write_coco,
    "voc": _write_voc,
    "imagefolder": _write_imagefolder,
    "voc_folder": _write_voc_folder,
    "yolo": _write_yolo,
    "yolo_seg": lambda folder, spec: _write_yolo(folder, spec, polygons=True),
    "coco_panoptic": _write_coco_panoptic,
}


def ensure_shapes(root: str | Path, spec: ShapesSpec, layout: str = "coco") -> Path:
    """Generate the dataset under ``root`` in ``layout`` unless it is already there with the same spec."""
    if layout not in LAYOUTS:
        raise ValueError(f"shapes layout {layout!r} must be one of {list(LAYOUTS)}")
    root = Path(root)
    stamp = root / SPEC_FILE
    wanted = {**asdict(spec), "layout": layout}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return root
    if root.exists() and not stamp.is_file():
        raise FileExistsError(
            f"dataset.root={root} exists but is not a generated shapes folder (no {SPEC_FILE}); "
            "point dataset.root at an empty or new folder"
        )
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    LAYOUTS[layout](tmp, spec)
    (tmp / SPEC_FILE).write_text(json.dumps(wanted, indent=1))
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        # another process (a second run started at the same moment) finished first and may be
        # reading its files already: keep them
        shutil.rmtree(tmp, ignore_errors=True)
        return root
    if root.exists():  # an older spec: replace it (it is ours, it carries the stamp)
        shutil.rmtree(root)
    try:
        tmp.rename(root)
    except OSError:  # another process renamed its copy into place in the meantime
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def split_spec(options: dict) -> tuple[ShapesSpec, dict]:
    """Separate the generation settings (``ShapesSpec`` fields) from a data module's other options."""
    names = {f.name for f in fields(ShapesSpec)}
    return ShapesSpec(**{k: v for k, v in options.items() if k in names}), {
        k: v for k, v in options.items() if k not in names
    }
