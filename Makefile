# Two entry points (see README "Quick start"): `make repro` and `make test`.
# Both create .venv from requirements.txt once, then are no-ops for set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ser-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONWARNINGS := ignore::DeprecationWarning
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup browser repro test test-fast gate bench results clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/python -c "import ser, tensorflow, opensmile, librosa, mlflow, dvc" 
	touch $@

# Headless Chromium + chromedriver for the web page's tests (Debian packages; root installs them).
browser:
	tools/install_browser.sh

repro: setup
	PATH=$(CURDIR)/$(BIN):$$PATH dvc repro

test: setup browser
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q

test-fast: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -m "not slow and not browser"

# CI metric gate: the real pipeline with default params, compared with the committed metrics.
gate: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python tools/gate.py

bench: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/bench_features.py features

# docs/RESULTS.md's generated tables, after metrics/ changed
results: setup
	$(BIN)/python tools/results.py

clean-venv:
	rm -rf $(VENV)
