"""Says which recipe (``conf/recipe/<task>_<dataset>.yaml``) a run applied and what it set."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from tasks import PROJECT_ROOT

log = logging.getLogger(__name__)
RECIPE_DIR = PROJECT_ROOT / "conf" / "recipe"


def accept_recipe_null(argv: list[str]) -> list[str]:
    """``recipe=null`` (or ``none``) on the command line means Hydra's ``~recipe``: no recipe."""
    return ["~recipe" if arg in ("recipe=null", "recipe=none") else arg for arg in argv]


def _leaves(node: object, prefix: str = "") -> list[str]:
    if isinstance(node, DictConfig):
        return [key for name, child in node.items() for key in _leaves(child, f"{prefix}{name}.")]
    return [prefix.rstrip(".")]


def _recipe_keys(recipe: str) -> list[str]:
    """The keys ``recipe`` sets, those of the recipes it builds on (its ``defaults``) first."""
    content = OmegaConf.load(RECIPE_DIR / f"{recipe}.yaml")
    bases = [name for name in content.pop("defaults", []) if isinstance(name, str) and name != "_self_"]
    return list(dict.fromkeys([key for base in bases for key in _recipe_keys(base)] + _leaves(content)))


def recipe_settings(cfg: DictConfig, recipe: str) -> dict[str, object]:
    """Every key ``recipe`` sets, with the value the run uses (a command-line override wins)."""
    return {key: OmegaConf.select(cfg, key, throw_on_missing=False) for key in _recipe_keys(recipe)}


def log_recipe(cfg: DictConfig) -> None:
    """One log line: the recipe applied and what it set, or that none was."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # composed by a test or a notebook: nothing to report
        return
    recipe = HydraConfig.get().runtime.choices.get("recipe")
    if not recipe or not (RECIPE_DIR / f"{recipe}.yaml").is_file():  # an optional group that found no file
        log.info("no recipe applied: the task, backbone and dataset configs as they are")
        return
    settings = ", ".join(f"{key}={value}" for key, value in recipe_settings(cfg, recipe).items())
    log.info("recipe %s applied (recipe=null leaves it out); it sets %s", recipe, settings)
