"""Reading COCO-style json files (instances, panoptic) with errors that name the file and the fix; kept
apart from the data modules so that prediction, which writes COCO formats, loads no training code."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path


def read_coco_json(
    path: Path, *, required: tuple[str, ...] = ("images",), kind: str = "COCO instances", object_hook=None
) -> dict:
    """A COCO-style json as a dict, once it is known to hold the ``required`` top-level lists; a file
    that is not JSON is named with the place where it breaks."""
    try:
        with open(path, encoding="utf-8") as file:
            dataset = json.load(file, object_hook=object_hook)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}; "
            "fix the file (python -m json.tool FILE shows where)"
        ) from err
    for key in required:
        if not isinstance(dataset, Mapping) or not isinstance(dataset.get(key), list):
            raise ValueError(f"{path} is not a {kind} json: no {key!r} list at the top level")
    return dict(dataset)
