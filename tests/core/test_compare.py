"""compare.py: the runs' differing overrides and metrics, best first; a sweep of 3 Optuna trials ranked."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks import PROJECT_ROOT
from tasks.common import errors
from tasks.common.errors import UserError, exit_on_user_error
from tasks.core.compare import compare
from tests.support import TINY_DETECTION, run_script, shapes_overrides


def _run(folder: Path, overrides: list[str], metrics: dict | None, monitor: str = "val/map") -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"task": {"monitor": monitor}}))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps({**metrics, "checkpoint": "x.ckpt", "per_class": {}}))
    return folder


def test_runs_are_ranked_by_the_monitored_metric_with_the_overrides_that_differ(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "multirun"
    _run(sweep / "0", ["lr=0.01", "task=detection"], {"map": 0.30, "map_50": 0.6, "loss": 1.0})
    _run(sweep / "1", ["lr=0.1", "task=detection"], None)  # diverged: no metrics.json
    _run(sweep / "2", ["lr=0.001", "task=detection"], {"map": 0.45, "map_50": 0.5, "loss": 2.0})
    _run(sweep / "10", ["lr=0.003", "task=detection"], {"map": 0.40, "map_50": 0.7, "loss": 1.5})
    header, rows = compare([sweep])
    assert header == ["run", "lr", "map", "map_50", "loss"]  # task= is the same everywhere: left out
    assert [row[0] for row in rows] == ["2", "10", "0", "1"]  # by map, the unfinished run last
    assert rows[0] == ["2", "0.001", 0.45, 0.5, 2.0] and rows[-1] == ["1", "0.1", None, None, None]
    with open(sweep / "comparison.csv", newline="") as file:
        written = list(csv.reader(file))
    assert written[0] == header and written[1] == ["2", "0.001", "0.45", "0.5", "2.0"] and written[4][2] == ""
    assert "| 2 | 0.001 | 0.4500 | 0.5000 | 2.0000 |" in (sweep / "comparison.md").read_text()
    assert "| 1 | 0.1 | - | - | - |" in capsys.readouterr().out
    # ranked by another metric, named run directories, written elsewhere
    header, rows = compare([sweep / "0", sweep / "10"], out=tmp_path / "table", sort_by="map_50")
    assert [row[0] for row in rows] == ["10", "0"] and (tmp_path / "table" / "comparison.csv").is_file()


def test_a_folder_without_runs_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"{tmp_path} holds no run"):
        compare([tmp_path])


@pytest.mark.slow
def test_an_optuna_sweep_of_three_trials_is_ranked_by_compare(shapes_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", "hparams_search=detection_optuna", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}",
            "backbone=resnet18", *TINY_DETECTION, *shapes_overrides(shapes_root), "trainer.max_steps=3"]  # fmt: skip
    result = run_script("train.py", args)
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    script = PROJECT_ROOT / "tasks" / "compare.py"
    result = subprocess.run([sys.executable, str(script), str(sweep)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(sweep / "comparison.csv", newline="") as file:
        header, *rows = list(csv.reader(file))
    assert header[:4] == ["run", "task.module.optimizer.lr", "task.module.optimizer.weight_decay", "map"]
    assert sorted(row[0] for row in rows) == ["0", "1", "2"]
    maps = [float(row[3]) for row in rows]
    assert maps == sorted(maps, reverse=True)
    assert maps[0] == pytest.approx(best["best_value"], abs=1e-12)  # the sweeper's best is the top row
    assert float(rows[0][1]) == pytest.approx(best["best_params"]["task.module.optimizer.lr"])


def test_a_trial_with_bad_input_fails_alone_in_a_sweep(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """Outside a sweep a user error ends the process (status 2); inside, it fails that trial only, so the
    sweeper records it and goes on (hparams_search's max_failure_rate)."""

    def trial() -> None:
        raise UserError("optimized_metric=val/nope is not among the run's metrics")

    with pytest.raises(SystemExit):
        exit_on_user_error(trial)()
    monkeypatch.setattr(errors, "in_sweep", lambda: True)
    with pytest.raises(UserError, match="val/nope"):
        exit_on_user_error(trial)()
    assert "val/nope" in caplog.text
