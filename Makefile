# Two entry points for a fresh machine: `make train` and `make test`.
# Both create (or reuse) a virtual environment in .venv and install the project into it.
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup train test test-fast lint clean-runs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev,deploy,tensorboard,mlflow,wandb,sweep]"
	touch $@

setup: $(VENV)/.installed

# Train Faster R-CNN on the built-in shapes dataset (override anything with ARGS="key=value ...").
train: setup
	$(PY) tasks/train.py task=detection $(ARGS)

test: setup
	$(PY) -m pytest -q

# The fast tier: no whole training runs, no subprocesses, no multi-process runs (pytest -m "not slow").
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-runs:
	rm -rf outputs
