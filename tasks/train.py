"""Train a task: ``python tasks/train.py task=detection [backbone=...] [dataset=...] [trainer=...]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from any directory

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from tasks.common.errors import exit_on_user_error  # noqa: E402
from tasks.core.recipes import accept_recipe_null  # noqa: E402
from tasks.core.resolvers import register_resolvers  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@exit_on_user_error
def main(cfg: DictConfig) -> dict[str, float] | float:
    """The run's metrics, or the one a sweeper optimises (``optimized_metric``, e.g. ``hparams_search=...``)."""
    from tasks.core.runner import optimized_value, train  # here: showing the config (--cfg job) imports no Lightning

    metrics = train(cfg)
    return optimized_value(metrics, cfg.get("optimized_metric")) if cfg.get("optimized_metric") else metrics


if __name__ == "__main__":
    sys.argv[1:] = accept_recipe_null(sys.argv[1:])
    main()
