"""One table of several runs (a sweep's trials, or run directories named one by one): the overrides that
set them apart and their final metrics, best first by the monitored metric."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from tasks.common.errors import UserError

# metrics.json values shown when present (after the monitored one), in this order
SHOWN_METRICS = (
    "map", "map_50", "map_75", "map_small", "mask_map", "mask_map_50", "miou", "pixel_acc", "top1", "top5", "loss",
)  # fmt: skip


@dataclass
class Run:
    directory: Path
    overrides: dict[str, str]
    metrics: dict[str, float]  # empty: the run did not finish
    monitor: str | None


def read_run(directory: Path) -> Run:
    """A run directory's command-line overrides (``.hydra/overrides.yaml``), final metrics
    (``metrics.json``) and monitored metric (``.hydra/config.yaml``'s ``task.monitor``)."""
    hydra = directory / ".hydra"
    lines = yaml.safe_load((hydra / "overrides.yaml").read_text()) if (hydra / "overrides.yaml").is_file() else []
    overrides = dict(line.split("=", 1) if "=" in line else (line, "") for line in lines or [])
    config = yaml.safe_load((hydra / "config.yaml").read_text()) if (hydra / "config.yaml").is_file() else {}
    monitor = ((config or {}).get("task") or {}).get("monitor")
    metrics_file = directory / "metrics.json"
    content = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    metrics = {name: float(v) for name, v in content.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return Run(directory, overrides, metrics, monitor.removeprefix("val/") if monitor else None)


def find_runs(paths: list[Path]) -> list[Run]:
    """Each path a run directory (it holds ``.hydra/`` or ``metrics.json``) or a folder of them (a
    multirun: its numbered trials)."""
    runs = []
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path} is not a directory: name run directories or a multirun directory")
        if (path / ".hydra").is_dir() or (path / "metrics.json").is_file():
            runs.append(read_run(path))
            continue
        children = sorted(
            (c for c in path.iterdir() if (c / ".hydra").is_dir() or (c / "metrics.json").is_file()),
            key=lambda c: (not c.name.isdigit(), int(c.name) if c.name.isdigit() else 0, c.name),
        )
        if not children:
            raise UserError(f"{path} holds no run (no .hydra/ or metrics.json in it or in its subfolders)")
        runs += [read_run(child) for child in children]
    return runs


def table(runs: list[Run], metrics: list[str] | None = None, sort_by: str | None = None) -> tuple[list[str], list]:
    """Header and rows: run, the overrides whose values differ between runs, the metrics; sorted by
    ``sort_by`` (default: the runs' monitored metric), highest first, unfinished runs last."""
    monitor = sort_by or next((run.monitor for run in runs if run.monitor), None)
    keys = list(dict.fromkeys(key for run in runs for key in run.overrides))
    varying = [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1]
    present = {name for run in runs for name in run.metrics}
    if metrics is None:
        metrics = [name for name in (monitor, *SHOWN_METRICS) if name in present]
    metrics = list(dict.fromkeys(metrics))

    def rank(run: Run) -> tuple:
        value = run.metrics.get(monitor) if monitor else None
        return (value is None, -(value or 0.0))

    header = ["run", *varying, *metrics]
    rows = [
        [run.directory.name, *(run.overrides.get(key, "") for key in varying), *(run.metrics.get(m) for m in metrics)]
        for run in sorted(runs, key=rank)
    ]
    return header, rows


def _cell(value: object) -> str:
    """Metrics to 4 decimals; a sampled override (0.0005611516415334506) to 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    try:
        number = float(str(value))
    except ValueError:
        return str(value)
    return f"{number:.4g}" if len(str(value)) > 8 else str(value)


def as_markdown(header: list[str], rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def as_csv(header: list[str], rows: list) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue()


def compare(paths: list[Path], out: Path | None = None, metrics: list[str] | None = None, sort_by: str | None = None):
    """Print the table; write ``comparison.csv`` and ``comparison.md`` into ``out`` (default: the first
    path). Returns the header and rows."""
    runs = find_runs(paths)
    header, rows = table(runs, metrics, sort_by)
    text = as_markdown(header, rows)
    print(text, end="")
    folder = out or paths[0]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comparison.md").write_text(text)
    (folder / "comparison.csv").write_text(as_csv(header, rows))
    print(f"written to {folder / 'comparison.csv'} and {folder / 'comparison.md'}")
    return header, rows
