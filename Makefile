# Two entry points: `make demo` runs the main job on loopback, `make test` runs every check.
# Both install what they need (Debian packages, a virtual environment) and are safe to rerun.

VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: demo cluster test system venv lint typecheck pytest clean

system:
	bash scripts/install-system.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: system $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest -q -p no:cacheprovider

test: lint typecheck pytest

demo: venv
	$(BIN)/python scripts/demo.py

# the docker-compose topology as processes on loopback, until Ctrl-C (CLUSTER_ARGS=--postgres)
cluster: venv
	$(BIN)/python scripts/cluster.py $(CLUSTER_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
