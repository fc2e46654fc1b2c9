# The README's two commands: `make repro` (set up, then run the pipeline) and `make test` (set up, then test).
# Set-up is idempotent: a fresh Debian / Python 3.11 machine needs nothing else.

VENV ?= .venv
PYTHON ?= python3
# The CPU wheel on these machines; on a GPU box pass e.g. TORCH="torch" or keep the installed one.
TORCH ?= torch==2.13.0
# `make wheelhouse`: wheels of what a GPU box with torch lacks, for its Python and platforms (several tags: pip
# takes a wheel matching any of them). torch >= 2.9 wheels need glibc 2.28, so manylinux_2_28 is the newest tag.
WHEEL_PY ?= 3.12
WHEEL_PLATFORM ?= manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
# The core packages such a box lacks (pydantic brings its own dependencies) and the compress extra; constriction
# without its one dependency, numpy (16 MB, and every torch box has it).
WHEELS ?= "pydantic>=2.7" "brotli>=1.1" "zstandard>=0.22" "python-minifier>=2.9"
WHEELS_NO_DEPS ?= "constriction>=0.4"

BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test test-fast lint system wheelhouse clean

setup: $(VENV)/.installed system

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	touch $@

# lrzip (Debian package) is the record's weight compressor; stages that need it fail clearly without it.
system:
	@command -v lrzip >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq lrzip >/dev/null; \
	  elif command -v sudo >/dev/null 2>&1; then sudo -n apt-get update -qq && sudo -n apt-get install -y -qq lrzip >/dev/null; \
	  fi; } || true
	@command -v lrzip >/dev/null 2>&1 || echo "warning: lrzip not installed (apt-get install lrzip); the compress stage needs it"

repro: setup
	dvc repro

lint: setup
	ruff check pgolf stages tests bench presets
	ruff format --check pgolf stages tests bench presets

# One pytest worker per core (pytest-xdist), each on one thread: torch's default of one thread per core in every
# worker and every stage process the tests start would oversubscribe the cores (spinning OpenMP threads).
PYTEST := OMP_NUM_THREADS=1 python -m pytest -q -n auto

test: lint
	$(PYTEST)

# The fast tier for iteration: everything but the tests marked slow (end-to-end pipeline runs, compiles, torchrun).
test-fast: lint
	$(PYTEST) -m "not slow"

# Carry .whl/ to the box and install with the README's line (FineWeb on GPUs with torchrun).
WHEEL_ARGS = --only-binary=:all: --python-version $(WHEEL_PY) $(foreach p,$(WHEEL_PLATFORM),--platform $(p)) -d .whl
wheelhouse:
	$(PYTHON) -m pip download -q $(WHEEL_ARGS) $(WHEELS)
	$(PYTHON) -m pip download -q --no-deps $(WHEEL_ARGS) $(WHEELS_NO_DEPS)
	@du -sh .whl && ls .whl

clean:
	rm -rf $(VENV)
