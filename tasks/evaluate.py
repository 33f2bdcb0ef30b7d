"""Evaluate a checkpoint: ``python tasks/evaluate.py task=detection ckpt_path=PATH [dataset=...]``.

Prints the metrics and a per-class table; writes ``metrics.json`` and the evaluator's files into the
run directory: detection ``predictions.json`` (COCO results format, the dataset's own image and
category ids), instance segmentation also ``segmentations.json`` (COCO segm results, RLE masks).
"""

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
def main(cfg: DictConfig) -> dict[str, float]:
    from tasks.core.runner import evaluate  # here: showing the config (--cfg job) imports no Lightning

    return evaluate(cfg)


if __name__ == "__main__":
    sys.argv[1:] = accept_recipe_null(sys.argv[1:])
    main()
