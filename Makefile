# Two entry points (see README "Quick start"): `make repro` and `make test`.
# Both create .venv from requirements.txt once, then are no-ops for set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ser-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONWARNINGS := ignore::DeprecationWarning
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup browser postgres repro test test-fast gate bench results team-up team-down clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/python -c "import ser, tensorflow, opensmile, librosa, mlflow, dvc, psycopg2, flask_wtf" 
	touch $@

# Headless Chromium + chromedriver for the web page's tests (Debian packages; root installs them).
browser:
	tools/install_browser.sh

# PostgreSQL for the team's tracking server and its tests (Debian package; root installs it).
postgres:
	tools/install_postgres.sh

repro: setup
	PATH=$(CURDIR)/$(BIN):$$PATH dvc repro

test: setup browser postgres
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

# The team's MLflow: PostgreSQL + a tracking server behind a login, on 127.0.0.1 (tools/team.py;
# the admin password from SER_TEAM_ADMIN_PASSWORD or ~/.config/ser/team-admin-password).
team-up: setup postgres
	$(BIN)/python tools/team.py up

team-down:
	$(BIN)/python tools/team.py down

clean-venv:
	rm -rf $(VENV)
