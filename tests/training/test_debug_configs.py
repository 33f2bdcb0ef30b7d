"""Every debug config (conf/debug/) runs a tiny training to the end, with what it switches on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tasks.core.runner import train
from tests.support import CONF_DIR, TINY_DETECTION, compose_config, shapes_overrides

DEBUG = sorted(p.stem for p in (CONF_DIR / "debug").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("debug", DEBUG)
def test_every_debug_config_runs(debug: str, shapes_root: Path, tmp_path: Path) -> None:
    overrides = [f"debug={debug}", "backbone=resnet18", *TINY_DETECTION, *shapes_overrides(shapes_root)]
    cfg = compose_config([*overrides, "trainer.max_steps=2", "trainer.enable_progress_bar=false"], tmp_path)
    switched = OmegaConf.load(CONF_DIR / "debug" / f"{debug}.yaml").trainer
    for key, value in switched.items():  # what the debug config sets reaches the trainer (limits may be lowered)
        assert key in ("max_epochs", "check_val_every_n_epoch") or cfg.trainer[key] == value, key
    metrics = train(cfg)
    assert "map_50" in metrics
    assert json.loads((tmp_path / "metrics.json").read_text())["map_50"] == metrics["map_50"]
