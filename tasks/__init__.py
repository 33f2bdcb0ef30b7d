"""Training, evaluation and data pipelines; importing it registers the config resolvers."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

from tasks.resolvers import register  # noqa: E402 - the resolvers read PROJECT_ROOT

register()
