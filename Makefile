# Two commands do everything on a fresh clone:
#   make train   bootstrap .venv, train FacRNN on the built-in synthetic benchmark, evaluate, print results
#   make test    bootstrap .venv, lint (ruff), run the test suite
#   make test-slurm  the tests against a real one-node SLURM alone (started and stopped around them; root)
# Extra Hydra overrides: make train ARGS="experiment=synthetic_paper seed=1"

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel of torch; a GPU user installs their CUDA build into .venv first (see README)
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -m "not slow"
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: venv train lint test test-slurm test-all clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

train: venv
	$(PY) train.py $(ARGS)

# lint rules and import order: [tool.ruff] in pyproject.toml (also a pre-commit hook)
lint: venv
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# a one-node SLURM (tests/slurm/start_cluster.sh: apt-get install when missing), its tests, then stopped
test-slurm: venv
	tests/slurm/with_cluster.sh --required $(PY) -m pytest tests/slurm -ra $(PYTEST_ARGS)

test-all: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) logs data/cache .pytest_cache
