"""The start-up check of every image a split will load, and what happens to the bad ones.

Each file is decoded once (JPEGs at 1/8 scale, which still reads every byte) after its header
checks (pixel count, recorded size, EXIF rotation). Results are remembered per file in a json
beside the dataset's cache, keyed on what changes whenever a file's content does: its path, inode,
size, modification time and status-change time (``ctime``, which no copy tool can set back: ``cp
-p``, ``rsync -a`` and ``tar x`` keep the modification time of a replaced file, not its ctime),
plus the recorded size, ``max_pixels`` and ``CHECKER_VERSION``. A later run re-decodes only the
files that changed. Many files are checked by a process pool.

Bad files either stop the run with a report that names every one of them, or, with
``dataset.skip_bad_images=true``, are left out of the split with a warning naming them: a run
never meets a bad file in the middle of an epoch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tasks.common.progress import progress
from tasks.data.doctor import DatasetError
from tasks.data.images import image_file_problem

log = logging.getLogger(__name__)

# a file, the (width, height) its annotation records, and how a report names it besides its path
ImageItem = tuple[Path, "tuple[int, int] | None", str]
_POOL_THRESHOLD = 512  # fewer files are checked in this process
CHECKER_VERSION = 2  # raise it when the checks change: every remembered result is then checked again
SHOWN = 50  # bad files named in a message; the full list goes to a file beside it


def _problem(item: tuple[str, tuple[int, int] | None, int]) -> str | None:
    path, recorded, max_pixels = item
    return image_file_problem(Path(path), recorded_size=recorded, max_pixels=max_pixels)


def _identity(path: Path, recorded: tuple[int, int] | None, max_pixels: int) -> str:
    stat = path.stat() if path.is_file() else None
    file = f"{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}" if stat else "missing"
    return f"v{CHECKER_VERSION}:{file}:{recorded}:{max_pixels}"


def _read_cache(cache_file: Path | None) -> dict[str, list]:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        return json.loads(cache_file.read_text())
    except (OSError, ValueError):  # a damaged cache is rebuilt
        return {}


def _write_cache(cache_file: Path, entries: dict[str, list]) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, cache_file)
    except OSError as err:
        log.warning("could not remember the image checks in %s (%s): they run again next time", cache_file, err)


def find_bad_images(
    items: Sequence[ImageItem], *, max_pixels: int, cache_file: Path | None = None, workers: int | None = None
) -> dict[int, str]:
    """Position in ``items`` -> what makes that file unusable, for every bad file."""
    cached = _read_cache(cache_file)
    identities = [_identity(path, recorded, max_pixels) for path, recorded, _ in items]
    todo = [i for i, (path, _, _) in enumerate(items) if cached.get(str(path), [None])[0] != identities[i]]
    jobs = [(str(items[i][0]), items[i][1], max_pixels) for i in todo]
    workers = min(workers or os.cpu_count() or 1, 16)
    if len(jobs) >= _POOL_THRESHOLD and workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            found = list(progress(pool.map(_problem, jobs, chunksize=64), len(jobs), "checking images"))
    else:
        found = [_problem(job) for job in progress(jobs, len(jobs), "checking images")]
    for i, problem in zip(todo, found, strict=True):
        cached[str(items[i][0])] = [identities[i], problem]
    if todo and cache_file is not None:
        _write_cache(cache_file, cached)
    return {i: cached[str(path)][1] for i, (path, _, _) in enumerate(items) if cached[str(path)][1]}


def bad_image_report(bad: dict[int, str], items: Sequence[ImageItem], source: str, list_file: Path | None) -> str:
    """Every bad file by name (the first ``SHOWN`` in the text, all of them in ``list_file``)."""
    lines = [f"{items[i][0]}{items[i][2]} is {problem}" for i, problem in sorted(bad.items())]
    text = f"{source}: {len(lines)} bad image file(s):\n    " + "\n    ".join(lines[:SHOWN])
    if len(lines) > SHOWN:
        text += f"\n    ... and {len(lines) - SHOWN} more"
    if list_file is not None:
        try:
            list_file.parent.mkdir(parents=True, exist_ok=True)
            list_file.write_text("\n".join(lines) + "\n")
            text += f"\n  (every one listed in {list_file})"
        except OSError:
            pass
    return text


def keep_good_images(
    items: Sequence[ImageItem],
    *,
    source: str,
    skip_bad_images: bool,
    max_pixels: int,
    cache_file: Path | None = None,
    report: bool = True,
) -> list[int]:
    """Positions of the usable files; bad files stop the run unless ``skip_bad_images`` (then they
    are named in a warning, when ``report``)."""
    bad = find_bad_images(items, max_pixels=max_pixels, cache_file=cache_file)
    if not bad:
        return list(range(len(items)))
    list_file = cache_file.with_name(cache_file.stem + "-bad.txt") if cache_file is not None else None
    text = bad_image_report(bad, items, source, list_file if report else None)
    if not skip_bad_images:
        raise DatasetError(
            f"{text}\nReplace or remove these files, or set dataset.skip_bad_images=true to train without them "
            "(python tasks/check_dataset.py dataset=... reports every problem of the dataset)."
        )
    if report:
        log.warning("%s\nleft out of this run (dataset.skip_bad_images=true)", text)
    return [i for i in range(len(items)) if i not in bad]
