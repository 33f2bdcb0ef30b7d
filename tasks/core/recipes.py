"""Says which recipe (``conf/recipe/<task>_<dataset>.yaml``, then ``conf/model_recipe/<model>_<dataset>.yaml``)
a run applied and what it set."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tasks import PROJECT_ROOT

log = logging.getLogger(__name__)
RECIPE_DIR = PROJECT_ROOT / "conf" / "recipe"
MODEL_RECIPE_DIR = PROJECT_ROOT / "conf" / "model_recipe"


def accept_recipe_null(argv: list[str]) -> list[str]:
    """``recipe=null`` (or ``none``) on the command line means Hydra's ``~recipe``: no recipe (and the same
    for ``model_recipe``). Rewritten before Hydra parses the command line because Hydra refuses a group set
    to null ("Config group override must be a string or a list")."""
    nulls = {f"{group}={value}": f"~{group}" for group in ("recipe", "model_recipe") for value in ("null", "none")}
    return [nulls.get(arg, arg) for arg in argv]


def _leaves(node: object, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value (as written) of every leaf of a config loaded from yaml."""
    if isinstance(node, dict):
        return {key: value for name, child in node.items() for key, value in _leaves(child, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): node}


def _recipe_values(recipe: str, folder: Path = RECIPE_DIR) -> dict[str, object]:
    """What ``recipe`` sets, as written, those of the recipes it builds on (its ``defaults``) first. Read
    from the file: Hydra's composed config keeps no record of which keys a group's file set."""
    content = OmegaConf.to_container(OmegaConf.load(folder / f"{recipe}.yaml"), resolve=False)
    bases = [name for name in content.pop("defaults", []) if isinstance(name, str) and name != "_self_"]
    values: dict[str, object] = {}
    for base in bases:
        values.update(_recipe_values(base, folder))
    values.update(_leaves(content))
    return values


def recipe_settings(cfg: DictConfig, recipe: str, folder: Path = RECIPE_DIR) -> dict[str, object]:
    """Every key ``recipe`` sets, with the value the run uses (a command-line override wins)."""
    return {key: OmegaConf.select(cfg, key, throw_on_missing=False) for key in _recipe_values(recipe, folder)}


def command_line_keys(overrides: list[str]) -> set[str]:
    """The config keys that command-line overrides (``key=value``, ``+key=...``, ``++key=...``) set."""
    return {arg.lstrip("+").split("=", 1)[0] for arg in overrides if "=" in arg and not arg.startswith("~")}


def command_line_overrides() -> list[str]:
    """This run's command-line overrides (none when the config was composed by a test or a notebook)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


LIMITS = ("trainer.max_steps", "trainer.max_epochs", "trainer.max_time")


def apply_command_line_limits(cfg: DictConfig, overrides: list[str]) -> None:
    """A training limit given on the command line ends the run: the other limits, where only the
    configs (a recipe, say) set them, are lifted, so that ``trainer.max_steps=60`` trains 60 steps even
    where the recipe stops after 4 epochs, and ``trainer.max_time=00:00:10:00`` trains ten minutes. Two
    given on the command line: whichever comes first."""
    given = command_line_keys(overrides) & set(LIMITS)
    if len(given) != 1:
        return
    (mine,) = given
    value = OmegaConf.select(cfg, mine)
    if value is None or (isinstance(value, int) and value < 0):
        return
    for other in sorted(set(LIMITS) - given - {"trainer.max_time"}):  # a configured budget is never lifted
        lifted = OmegaConf.select(cfg, other)
        if lifted is None or lifted < 0:
            continue
        OmegaConf.update(cfg, other, -1)
        log.info(
            "%s=%s from the command line ends the run: %s=%s that the configs set is lifted (pass %s too to stop at "
            "whichever comes first)",
            mine, value, other, lifted, other,
        )  # fmt: skip


def log_recipe(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """One log line: the recipe applied, what it set and which of its values the command line
    overrode, or that none was applied."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # composed by a test or a notebook: nothing to report
        return
    recipe = HydraConfig.get().runtime.choices.get("recipe")
    if not recipe or not (RECIPE_DIR / f"{recipe}.yaml").is_file():  # an optional group that found no file
        log.info("no recipe applied: the task, backbone and dataset configs as they are")
    else:
        _log_one("recipe", recipe, RECIPE_DIR, cfg, overrides)
    model_recipe = HydraConfig.get().runtime.choices.get("model_recipe")
    if model_recipe and (MODEL_RECIPE_DIR / f"{model_recipe}.yaml").is_file():
        _log_one("model_recipe", model_recipe, MODEL_RECIPE_DIR, cfg, overrides)


def _log_one(group: str, recipe: str, folder: Path, cfg: DictConfig, overrides: list[str] | None) -> None:
    given = command_line_keys(overrides or [])
    written = _recipe_values(recipe, folder)
    used = recipe_settings(cfg, recipe, folder)
    kept = ", ".join(f"{key}={value}" for key, value in used.items() if key not in given)
    replaced = ", ".join(f"{key}={value} (recipe: {written[key]})" for key, value in used.items() if key in given)
    line = f"{group} {recipe} applied ({group}=null leaves it out); it sets {kept or 'nothing else'}"
    log.info("%s%s", line, f"; the command line overrides {replaced}" if replaced else "")
