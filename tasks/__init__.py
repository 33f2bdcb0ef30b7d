"""Training, evaluation and data pipelines; importing it registers the config resolvers."""

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Config paths are anchored on the project root, never on the working directory.
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
