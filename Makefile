# The two commands (see README): `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/data/dagster_home
export KS_PLATFORM_STORE ?= $(CURDIR)/data/store
# `ks-platform demo` writes only into the root named demo (data/landing/demo when none is configured).
export KS_PLATFORM_LANDING ?= rig1=$(CURDIR)/data/landing/rig1,demo=$(CURDIR)/data/landing/demo
export KS_PLATFORM_BACKEND ?= auto
# Port of the UI of `make dev`.
PORT ?= 3000

.PHONY: install demo test dev executor-dev bench screenshots clean gpu-bundle

$(BIN)/ks-platform: pyproject.toml constraints/cpu.txt docker/requirements-nodeps.lock
	$(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (a few minutes the first time; pip's log: $(VENV)/install.log)"
	$(BIN)/pip install -q --upgrade pip wheel setuptools > $(VENV)/install.log
	# torch first, pinned: 2.13.0 is the local CPU wheel (any other spec pulls GBs of CUDA packages)
	$(BIN)/pip install -q -c constraints/cpu.txt torch==2.13.0 >> $(VENV)/install.log
	$(BIN)/pip install -q -c constraints/cpu.txt -e '.[test,k8s]' >> $(VENV)/install.log
	# UnitMatchPy's metadata pins numpy<2/pandas<3: installed without its declared dependencies (see the lock file)
	$(BIN)/pip install -q --no-deps -r docker/requirements-nodeps.lock >> $(VENV)/install.log
	touch $@

install: $(BIN)/ks-platform
	@mkdir -p $(DAGSTER_HOME) data/landing/rig1 data/landing/demo
	@cp -f dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	@echo "installed: $(VENV) (ks-platform $$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("ks_platform"))')), Dagster instance in $(DAGSTER_HOME), store in $(KS_PLATFORM_STORE)"

## Install, make a demo session and materialize all five assets for it on the embedded instance (CPU ok).
demo: install
	$(BIN)/ks-platform doctor
	$(BIN)/ks-platform demo

## Install, check format, lint, layers (import-linter) and that the definitions load (dg), then run the whole test suite.
test: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg check defs  # dg ([tool.dg] in pyproject.toml) in this venv
	bash scripts/install_system_deps.sh
	$(BIN)/python -m pytest -v --durations=15

## Browse the same assets in the Dagster UI (webserver + daemon) on http://127.0.0.1:3000; another port: `make dev PORT=3001`
## (`.venv/bin/dagster dev -w workspace.yaml` loads the same code location.)
dev: install
	# SIGINT back to its default first: started in the background (`make dev &`, nohup, a service) it is ignored, and
	# Dagster gives SIGTERM the SIGINT handler, so neither would stop it (stop it with SIGTERM or Ctrl-C)
	# Started in the instance's folder with the workspace named: dg then runs Dagster there instead of in the project
	# folder, whose dagster.yaml (the template copied above) Dagster would warn is not the instance's
	cd $(DAGSTER_HOME) && VIRTUAL_ENV=$(CURDIR)/$(VENV) $(CURDIR)/$(BIN)/python $(CURDIR)/scripts/exec_with_sigint.py \
		$(CURDIR)/$(BIN)/dg dev -w $(CURDIR)/workspace.yaml -h 127.0.0.1 -p $(PORT)

## The UI with every step in a ks-platform:cpu container (local Docker engine, local PostgreSQL under data/executor-dev)
executor-dev: install
	bash scripts/install_system_deps.sh
	bash scripts/start_docker.sh
	docker image inspect ks-platform:cpu >/dev/null 2>&1 || bash docker/build_images.sh cpu
	bash scripts/executor_dev.sh

## Refresh the docs' UI screenshots: the browser test (real Chromium) saves one per step.
screenshots: install
	bash scripts/install_system_deps.sh
	$(BIN)/python -m pytest -v ks_platform_tests/test_ui_browser.py
	mkdir -p docs/screenshots && cp test-artifacts/ui/[0-9]*.png docs/screenshots/

bench: install
	$(BIN)/python bench/run_all.py

## Wheels for an air-gapped GPU node (bench/gpu_bundle.txt, <= 64 MiB in .gpu_bundle); on the node run
## `bash bench/gpu_acceptance.sh run --mode gpu --out OUT` (docs/benchmarks.md, "GPU acceptance run").
gpu-bundle: install
	bash bench/gpu_acceptance.sh bundle

clean:
	rm -rf data/store data/dagster_home
