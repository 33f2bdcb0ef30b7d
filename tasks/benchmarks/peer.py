"""This suite against Ultralytics YOLO on the same data and wall-clock budget (prints figures; not a test).

    python -m tasks.benchmarks.peer [--data shapes|large] [--minutes 10] [--peer-env /tmp/peer-env]

Writes the data in the YOLO layout (the built-in shapes, or large images crowded with small objects),
then trains from scratch for the same time:

- this suite: ``python tasks/train.py dataset=yolo dataset.root=DIR backbone.weights=none
  trainer.max_time=...`` (no other override; ``--suite-extra`` adds some, to measure an ingredient);
- the peer: ``yolo detect train model=yolov8n.yaml pretrained=False time=...`` with its own defaults, in
  its own virtual environment (``--peer-env``, created with ``pip install ultralytics`` when missing; the
  suite never imports it).

Both predict the validation images (the peer at confidence 0.001, as its own validation does) and both
are scored by this suite's COCO evaluator against the same ground truth, read from the YOLO labels by
this suite's reader. Prints a table and a last line ``map50_suite=X map50_peer=Y minutes=M``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tasks import PROJECT_ROOT
from tasks.benchmarks.machine import cpu_description
from tasks.data.shapes import ShapesSpec, ensure_shapes

DATA = {
    "shapes": ShapesSpec(),  # the built-in set: 1000 + 200 images of 128 px
    # large photos with small objects: 1024 px images, 10-25 objects of 12-40 px each
    "large": ShapesSpec(
        num_train=48,
        num_val=12,
        image_size=1024,
        min_objects=10,
        max_objects=25,
        min_object_size=12,
        max_object_size=40,
    ),  # fmt: skip
}
SHOWN = ("map_50", "map", "map_small", "map_medium", "mar_100")
PEER_PREDICT = """
import json, sys
from pathlib import Path
from ultralytics import YOLO
weights, images, out = sys.argv[1:4]
rows = []
for result in YOLO(weights).predict(source=images, conf=0.001, max_det=300, device="cpu", stream=True, verbose=False):
    for box, cls, score in zip(result.boxes.xyxy.tolist(), result.boxes.cls.tolist(), result.boxes.conf.tolist()):
        rows.append({"file": Path(result.path).name, "class": int(cls), "score": float(score), "box": box})
Path(out).write_text(json.dumps(rows))
"""


def budget(minutes: float) -> str:
    """Lightning's DD:HH:MM:SS."""
    seconds = round(minutes * 60)
    return f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def peer_python(env: Path) -> Path:
    """The peer's interpreter, its environment created (``pip install ultralytics``) when missing."""
    python = env / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "ultralytics"], check=True)
    return python


def train_suite(root: Path, minutes: float, run: Path, extra: list[str]) -> tuple[float, Path]:
    command = [
        sys.executable, "tasks/train.py", "dataset=yolo", f"dataset.root={root}", "backbone.weights=none",
        f"trainer.max_time={budget(minutes)}", f"hydra.run.dir={run}", "trainer.enable_progress_bar=false", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, cwd=PROJECT_ROOT, check=True)
    return time.perf_counter() - start, run / "predictions.json"


def train_peer(python: Path, root: Path, minutes: float, run: Path) -> tuple[float, Path]:
    names = _names(root)
    data = run / "data.yaml"
    run.mkdir(parents=True, exist_ok=True)
    data.write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n"
        + "".join(f"  {k}: {name}\n" for k, name in enumerate(names))
    )
    yolo = python.parent / "yolo"
    command = [
        str(yolo), "detect", "train", "model=yolov8n.yaml", "pretrained=False", f"data={data}",
        f"time={minutes / 60}", "device=cpu", "plots=False", f"project={run}", "name=train", "exist_ok=True",
        "seed=0", "amp=False",
    ]  # fmt: skip
    environment = {**os.environ, "YOLO_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(command, cwd=run, check=True, env=environment)
    seconds = time.perf_counter() - start
    weights = run / "train" / "weights" / "best.pt"
    predictions = run / "predictions.json"
    script = [str(python), "-c", PEER_PREDICT, str(weights), str(root / "images" / "val"), str(predictions)]
    subprocess.run(script, cwd=run, check=True, env=environment)
    return seconds, predictions


def _names(root: Path) -> list[str]:
    import yaml

    names = yaml.safe_load((root / "data.yaml").read_text())["names"]
    return [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)


def ground_truth(root: Path):
    """The validation split's COCO ground truth, category ids and class names, as this suite reads the folder."""
    from tasks.data.formats.yolo import YoloDataModule

    datamodule = YoloDataModule(root=str(root), split_file=None)
    inputs = datamodule.evaluation_inputs()
    return inputs["ground_truth"](), inputs["category_ids"]


def peer_rows(predictions: Path, coco_gt, category_ids: list[int]) -> list[dict]:
    """The peer's boxes (x1 y1 x2 y2 in image pixels, class index) as COCO results of this suite's images."""
    image_ids = {Path(image["file_name"]).name: image_id for image_id, image in coco_gt.imgs.items()}
    rows = []
    for row in json.loads(predictions.read_text()):
        x1, y1, x2, y2 = row["box"]
        rows.append({
            "image_id": image_ids[row["file"]], "category_id": category_ids[row["class"]],
            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": row["score"],
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(DATA), default="shapes")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time of each system")
    parser.add_argument("--peer-env", type=Path, default=Path(tempfile.gettempdir()) / "peer-env")
    parser.add_argument("--suite-extra", nargs="*", default=[], help="overrides added to the suite's command")
    parser.add_argument("--work", type=Path, default=None, help="folder for the data and the runs (default: temporary)")
    args = parser.parse_args()
    from tasks.evaluation.coco_eval import coco_evaluate

    work = args.work or Path(tempfile.mkdtemp(prefix="peer_"))
    root = ensure_shapes(work / f"{args.data}_yolo", DATA[args.data], "yolo")
    peer_run = work / f"peer_{args.minutes:g}min"
    if (peer_run / "seconds.txt").is_file():  # the same data and budget in this --work folder: trained once
        peer_seconds, peer_predictions = float((peer_run / "seconds.txt").read_text()), peer_run / "predictions.json"
        print(f"peer: the run in {peer_run}")
    else:
        peer_seconds, peer_predictions = train_peer(peer_python(args.peer_env), root, args.minutes, peer_run)
        (peer_run / "seconds.txt").write_text(str(peer_seconds))
    suite_run = work / f"suite_{args.minutes:g}min_{'_'.join(args.suite_extra).replace('/', '-') or 'defaults'}"
    suite_seconds, suite_predictions = train_suite(root, args.minutes, suite_run, args.suite_extra)
    coco_gt, category_ids = ground_truth(root)
    scores = {
        "suite": coco_evaluate(coco_gt, json.loads(suite_predictions.read_text())).stats,
        "peer": coco_evaluate(coco_gt, peer_rows(peer_predictions, coco_gt, category_ids)).stats,
    }
    seconds = {"suite": suite_seconds, "peer": peer_seconds}
    print(f"\n{cpu_description()}; data {args.data} ({DATA[args.data]}); {args.minutes:g} minutes of training each")
    print(f"suite: tasks/train.py dataset=yolo backbone.weights=none trainer.max_time={budget(args.minutes)} "
          f"{' '.join(args.suite_extra)}".rstrip())  # fmt: skip
    print("peer:  yolo detect train model=yolov8n.yaml pretrained=False time=... (Ultralytics' defaults)")
    print(f"{'system':<8}" + "".join(f"{name:>11}" for name in SHOWN) + f"{'wall s':>9}")
    for system, stats in scores.items():
        print(f"{system:<8}" + "".join(f"{stats[name]:11.4f}" for name in SHOWN) + f"{seconds[system]:9.0f}")
    suite, peer = scores["suite"]["map_50"], scores["peer"]["map_50"]
    print(f"map50_suite={suite:.4f} map50_peer={peer:.4f} minutes={args.minutes:g}")


if __name__ == "__main__":
    main()
