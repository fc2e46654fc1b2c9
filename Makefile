# The README's two commands: `make repro` (set up, then run the pipeline) and `make test` (set up, then test).
# Set-up is idempotent: a fresh Debian / Python 3.11 machine needs nothing else.

VENV ?= .venv
PYTHON ?= python3
# The CPU wheel on these machines; on a GPU box pass e.g. TORCH="torch" or keep the installed one.
TORCH ?= torch==2.13.0

BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test lint system clean

setup: $(VENV)/.installed system

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
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

test: lint
	python -m pytest -q

clean:
	rm -rf $(VENV)
