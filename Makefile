# Every target sets up .venv itself (from the lock file) and reuses it while it is current.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TIER ?= small
# numba (pynndescent, UMAP) compiles on first use in every process; caching the machine code
# lets each Dask worker after the first load it instead.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.venv/numba-cache

.PHONY: venv run test lint demo bench lock

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[local,dev]'
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(BIN)/python -m worker

demo: venv
	$(BIN)/python -m worker demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q --durations=15

bench: venv
	$(BIN)/python -m benchmarks --tier $(TIER)

# Rewrite the lock file from what is installed now (after changing pyproject.toml).
lock: venv
	$(BIN)/python -m pip freeze --exclude-editable --exclude worker > constraints.txt
