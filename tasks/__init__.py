"""Training, evaluation, inference and data pipelines, in packages by kind.

Layers, lowest first; a module imports only from its own layer or lower ones (tested):
``common`` (errors, checkpoint files, the inference metadata) < ``data`` < ``evaluation`` <
``training`` and ``inference`` (side by side: neither imports the other) < ``core`` (runner,
launch, recipes, config resolvers) < the entry scripts (``tasks/*.py``) and ``benchmarks``.
The config resolvers are registered explicitly (``tasks.core.resolvers.register_resolvers``) by
the scripts before Hydra composes a config.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
