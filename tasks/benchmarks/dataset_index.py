"""Start-up cost of training on COCO 2017-sized data: time and peak memory of a 1-step run, first
with an empty index cache, then reusing it; and, for reference, pycocotools indexing the same json.

``python -m tasks.benchmarks.dataset_index [--root DIR]`` generates the data on first use (118,287
training images with 860,001 boxes and their polygons, 5,000 validation images; 640x480 JPEGs,
hard links after the first 64) and runs, with an empty index cache and then reusing it:

    python tasks/train.py task=detection dataset=coco dataset.root=DIR backbone=resnet18
        trainer.max_steps=1 trainer.limit_val_batches=1 dataset.num_workers=2
        backbone.weights=none backbone.norm=frozen_bn backbone.trainable_stages=3

(the reference recipe's model with random weights, offline), then the same with the model's input
resized to 64 px (``task.model.min_size=64 max_size=64``; the files stay 640x480 JPEGs, decoded in
full), whose training step costs next to nothing: what is left is start-up and data. For
reference, the same run measures pycocotools indexing the training json, which every process and
loader worker held before. Peak memory is the main process's (VmHWM), read while it runs.

Only 64 distinct JPEGs exist (the rest are hard links to them), so after the first few reads every
decode, the start-up image check's included, reads from the page cache: the decode figures are those
of a warm cache, not of 123,287 files read from disk.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tasks import PROJECT_ROOT
from tasks.benchmarks.coco_like import write_coco_like


def _peak_rss_gb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        return None
    return None


def measure(command: list[str]) -> tuple[float, float]:
    """Wall time (s) and the main process's peak resident memory (GB) of ``command``."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, _peak_rss_gb(process.pid) or 0.0)
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.read()[-3000:]}")
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "visionsuite-coco2017-shaped")
    args = parser.parse_args()
    started = time.perf_counter()
    write_coco_like(args.root, train=118_287, val=5_000)
    print(f"data: {args.root} (ready after {time.perf_counter() - started:.0f} s)")
    work = Path(tempfile.mkdtemp(prefix="visionsuite-index-"))
    train = [
        sys.executable,
        str(PROJECT_ROOT / "tasks" / "train.py"),
        "task=detection",
        "dataset=coco",
        f"dataset.root={args.root}",
        "backbone=resnet18",
        "backbone.weights=none",
        "backbone.norm=frozen_bn",
        "backbone.trainable_stages=3",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=1",
        "dataset.num_workers=2",
        "trainer.enable_progress_bar=false",
        f"paths.cache_dir={work / 'cache'}",
        f"paths.log_dir={work / 'outputs'}",
    ]
    reference = [
        sys.executable,
        "-c",
        "import sys; from tasks.data.formats.coco import load_coco; load_coco(sys.argv[1])",
        str(args.root / "annotations" / "instances_train2017.json"),
    ]
    tiny = [*train, "task.model.min_size=64", "task.model.max_size=64", f"paths.cache_dir={work / 'cache64'}"]
    try:
        figures = {
            "800 px, first run (builds the index)": measure(train),
            "800 px, later run (reuses the index)": measure(train),
            "64 px model input (640x480 files), first run: start-up and data": measure(tiny),
            "64 px model input (640x480 files), later run: start-up and data": measure(tiny),
            "reference: pycocotools COCO(train json), what every process held before": measure(reference),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("images: 64 distinct 640x480 JPEGs behind 123,287 names (hard links): decoding reads the page cache")
    print("command: " + " ".join(train[1:]))
    for name, (seconds, gigabytes) in figures.items():
        print(f"{name}: {seconds:.1f} s, peak {gigabytes:.2f} GB")


if __name__ == "__main__":
    main()
