# Two commands are all the set-up there is:
#   make run    create .venv, install, set up the local ZenML stack, train on the synthetic dataset
#   make test   run the test suite (creates .venv if missing; installs headless Chromium if missing)

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CONFIG ?= configs/quickstart.yaml

export ZENML_ANALYTICS_OPT_IN := false
export MLFLOW_DISABLE_TELEMETRY := true
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install browser run test setup lint lock clean ui

$(INSTALLED): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(INSTALLED)

install: $(INSTALLED)

setup: install
	$(BIN)/cxr setup

run: install
	$(BIN)/cxr train --config $(CONFIG)

# Headless Chromium from Debian's packages, for the tests that open the HTML pages in a real
# browser (tests/browser.py drives it with Playwright; no browser is downloaded). Does nothing
# when `chromium` is on PATH; needs root (or sudo) and apt-get otherwise.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

test: install browser
	$(BIN)/python -m pytest

# Style and architecture: ruff (lint + format, configured in pyproject.toml) and
# import-linter (layering and no import cycles, [tool.importlinter] there).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.cxr/mlflow/mlflow.db --port 5000

# Re-resolve the pinned versions after changing dependencies in pyproject.toml.
lock: install
	{ head -2 constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^cxr-mlops'; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf .cxr .zen
