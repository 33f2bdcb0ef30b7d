"""What the benchmarks that train share: a run from the project's configs, timed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tasks import PROJECT_ROOT
from tasks.core.resolvers import register_resolvers
from tasks.core.runner import evaluate, train


def timed_run(
    overrides: list[str], output_dir: Path, command: Callable[[DictConfig], object] = train, config: str = "config"
) -> tuple[object, float]:
    """``command`` (train, evaluate; export with ``config="export"``) on the composed config with
    ``overrides``; what it returns (metrics) and its seconds."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config, overrides=[*overrides, f"paths.output_dir={output_dir}"])
    start = time.perf_counter()
    metrics = command(cfg)
    return metrics, time.perf_counter() - start


def tune_on_held_out(
    checkpoint: Path,
    overrides: list[str],
    tuning_data: list[str],
    candidates: dict[str, list[str]],
    metric: str,
    folder: Path,
) -> tuple[str, dict[str, float]]:
    """Score ``checkpoint`` once per candidate setting on a held-out tuning split (``tuning_data``: dataset
    overrides naming images neither trained on nor reported), so that a setting chosen there says
    nothing of the validation split it is then reported on; return the best candidate by ``metric`` and
    each candidate's figure."""
    scores = {}
    for name, extra in candidates.items():
        arguments = [*overrides, *tuning_data, *extra, f"ckpt_path={checkpoint}"]
        metrics, _ = timed_run(arguments, folder / f"tune_{name}", evaluate)
        scores[name] = float(metrics[metric])
    return max(scores, key=scores.get), scores
