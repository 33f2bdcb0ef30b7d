"""Look before you train: ``python tasks/show_dataset.py dataset=... [split=train] [count=16] [augmented=true]``.

Writes ``dataset_<split>.png`` into the run directory: a grid of the split's images with their
ground-truth boxes, masks or classes and class names drawn, as the loader delivers them.
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="show_dataset")
@exit_on_user_error
def main(cfg: DictConfig) -> Path:
    from tasks.core.show import show_dataset

    return show_dataset(cfg)


if __name__ == "__main__":
    sys.argv[1:] = accept_recipe_null(sys.argv[1:])
    main()
