# Two commands are all the set-up there is:
#   make run    create .venv, install, set up the local ZenML stack, train on the synthetic dataset
#   make test   run the test suite (creates .venv if missing; installs headless Chromium and shellcheck if missing)

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CONFIG ?= configs/quickstart.yaml

export ZENML_ANALYTICS_OPT_IN := false
export MLFLOW_DISABLE_TELEMETRY := true
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install browser tools run test setup lint lock clean ui k8s-manifests

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

# shellcheck, for the check of infra/register_kubernetes_stack.sh (tests/test_infra_manifests.py); Debian's package.
tools:
	@command -v shellcheck >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq shellcheck; }

test: install browser tools
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

# Kubernetes, checked offline (infra/README.md): the Jobs ZenML's Kubernetes orchestrator would submit
# for the training pipeline, and infra/k8s's overlays rendered by kubectl; kubernetes-validate --strict
# for Kubernetes 1.29-1.33 and the pod policies. Writes $(K8S_OUT); needs kubectl for the overlays.
K8S_OUT ?= build/k8s
k8s-manifests: install
	$(BIN)/cxr k8s-manifests --config configs/paper.yaml --zenml-config infra/zenml_kubernetes.yaml --out $(K8S_OUT)/pipelines
	for overlay in team dev; do kubectl kustomize infra/k8s/overlays/$$overlay > $(K8S_OUT)/$$overlay.yaml || exit 1; done
	$(BIN)/python -m components.kube_checks $(K8S_OUT)/team.yaml $(K8S_OUT)/dev.yaml
	$(BIN)/python -m cxr.kfp_ir --config configs/paper.yaml --zenml-config infra/zenml_kubernetes.yaml --out $(K8S_OUT)/kubeflow/training_pipeline.yaml

clean:
	rm -rf .cxr .zen
