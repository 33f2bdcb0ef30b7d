"""The run's charts (``plots/``): loss and metric curves, per-class bars, precision-recall curves and the
detection confusion matrix, each with the numbers it draws in a JSON file beside it."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed (or wanted) on a training node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tasks.evaluation.evaluation import Evaluation  # noqa: E402

# per-class columns drawn as bars, the first present of each pair
BAR_METRICS = (("ap", "iou", "accuracy", "pq"), ("mask_ap",))
BAR_LABELS = {"ap": "AP (IoU 0.50:0.95)", "mask_ap": "mask AP", "iou": "IoU", "accuracy": "accuracy", "pq": "PQ"}
MOST_LEGEND_ENTRIES = 20
# metrics drawn as curves, where the run logs them (val/<name>)
CURVE_METRICS = (
    "map", "map_50", "mask_map", "mask_map_50", "miou", "pixel_acc", "top1", "top5", "accuracy", "pq", "pq_things",
    "pq_stuff",
)  # fmt: skip


def to_image(figure: plt.Figure) -> Image.Image:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def per_class_picture(per_class: Mapping[str, Mapping[str, float]]) -> Image.Image | None:
    """Horizontal bars of AP (detection), IoU (segmentation), PQ (panoptic) or accuracy per class, and mask AP beside
    box AP for instance segmentation; classes sorted by the first metric, worst at the top."""
    present = {metric for row in per_class.values() for metric in row}
    columns = [next(m for m in group if m in present) for group in BAR_METRICS if present.intersection(group)]
    if not columns:
        return None
    # barh draws the first name at the bottom: best first puts the worst class at the top
    names = sorted(per_class, key=lambda name: -per_class[name].get(columns[0], 0.0))
    height = 0.25 * len(names) + 1.2
    figure, axes = plt.subplots(figsize=(6, height))
    positions = np.arange(len(names))
    bar = 0.8 / len(columns)
    for k, column in enumerate(columns):
        values = [per_class[name].get(column, 0.0) for name in names]
        offset = (k - (len(columns) - 1) / 2) * bar
        axes.barh(positions + offset, values, height=bar, label=BAR_LABELS.get(column, column))
    axes.set_yticks(positions, names)
    axes.set_xlim(0, 1)
    axes.set_xlabel(" / ".join(BAR_LABELS.get(column, column) for column in columns))
    axes.grid(axis="x", alpha=0.3)
    if len(columns) > 1:
        axes.legend(loc="lower right")
    axes.set_title("per class")
    return to_image(figure)


def pr_curves_picture(curves: Mapping[str, Any]) -> Image.Image | None:
    """COCOeval's interpolated precision against recall at IoU 0.5, one line per class (AP50 in the
    legend) and their mean; with many classes, the classes in grey and the legend for the mean only."""
    recall = np.asarray(curves.get("recall", []))
    precision = {name: np.asarray(values) for name, values in curves.get("precision", {}).items()}
    if not precision or not recall.size:
        return None
    figure, axes = plt.subplots(figsize=(6, 5))
    many = len(precision) > MOST_LEGEND_ENTRIES
    for name, values in precision.items():
        label = None if many else f"{name} {curves['ap_50'].get(name, 0.0):.3f}"
        axes.plot(recall, values.clip(min=0), linewidth=1, color="0.7" if many else None, label=label)
    mean = np.mean([values.clip(min=0) for values in precision.values()], axis=0)
    axes.plot(recall, mean, linewidth=3, color="black", label=f"all classes {float(mean.mean()):.3f}")
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title="precision-recall at IoU 0.5")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize="small")
    return to_image(figure)


def confusion_matrix_picture(content: Mapping[str, Any]) -> Image.Image:
    """Counts of (true class, predicted class), background included; colour: the share of each true
    class's row (the background row: of the detections on nothing)."""
    matrix = np.asarray(content["matrix"], dtype=np.float64)
    names = content["classes"]
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 1.5 + 0.45 * len(names)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    shown = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(shown, ax=axes, fraction=0.046, label="share of the row")
    axes.set_xticks(range(len(names)), names, rotation=90)
    axes.set_yticks(range(len(names)), names)
    axes.set(xlabel="predicted", ylabel="true")
    if len(names) <= 30:  # counts stay readable
        for (row, column), count in np.ndenumerate(matrix):
            if count:
                colour = "white" if shares[row, column] > 0.5 else "black"
                axes.text(column, row, f"{int(count)}", ha="center", va="center", fontsize=7, color=colour)
    axes.set_title(
        f"IoU >= {content['iou_threshold']}, score >= {content['score_threshold']}", fontsize="medium"
    )  # fmt: skip
    return to_image(figure)


def curves_picture(history: Mapping[str, Sequence[Sequence[float]]], monitor: str | None = None) -> Image.Image | None:
    """Losses (training and validation) against the optimizer step, and the validation metrics beside."""
    losses = {name: points for name, points in history.items() if name in ("train/loss", "val/loss")}
    wanted = [f"val/{name}" for name in CURVE_METRICS] + ([monitor] if monitor else [])
    metrics = {name: history[name] for name in dict.fromkeys(wanted) if name in history}
    if not losses and not metrics:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for axes, group, title in ((left, losses, "loss"), (right, metrics, "validation")):
        for name, points in group.items():
            steps, values = zip(*points, strict=True) if points else ((), ())
            axes.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=name)
        axes.set(xlabel="optimizer step", title=title)
        axes.grid(alpha=0.3)
        if group:
            axes.legend(fontsize="small")
    return to_image(figure)


def evaluation_plots(evaluation: Evaluation) -> dict[str, Any]:
    """``plots/<name>.png`` and ``plots/<name>.json`` for what ``evaluation`` holds: the per-class table,
    and for detection the precision-recall curves and the confusion matrix."""
    files: dict[str, Any] = {}
    drawn = (
        ("per_class", evaluation.per_class, per_class_picture),
        ("pr_curves", evaluation.analysis.get("pr_curves"), pr_curves_picture),
        ("confusion_matrix", evaluation.analysis.get("confusion_matrix"), confusion_matrix_picture),
    )
    for name, content, draw in drawn:
        picture = draw(content) if content else None
        if picture is not None:
            files[f"plots/{name}.png"] = picture
            files[f"plots/{name}.json"] = content
    return files
