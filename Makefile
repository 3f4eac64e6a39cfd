# Federated learning with site-local experiment tracking. `make help` lists the targets.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
ROUNDS ?= 3
DATASET ?= digits

##@ Help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
	  /^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development (no Docker)

.PHONY: venv
venv: $(VENV)/.installed ## Build .venv from the pins in requirements.txt

$(VENV)/.installed: requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or set PYTHON=" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

.PHONY: test
test: venv ## Run all tests (creates .venv when missing)
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: venv ## Run the quick tests: CLI, data, exported job
	$(PY) -m pytest tests/test_cli.py tests/test_data.py tests/test_job_export.py $(PYTEST_ARGS)

.PHONY: export
export: venv ## Write the job folder to jobs/ (SITE1_URI / SITE2_URI set the tracking URIs)
	$(PY) job/job.py --env export --export-dir jobs --rounds $(ROUNDS) --dataset $(DATASET) \
	  --site site-1=$${SITE1_URI:-http://mlflow-site-1:5000} --site site-2=$${SITE2_URI:-http://mlflow-site-2:5000}

.PHONY: clean-venv
clean-venv: ## Remove .venv
	rm -rf $(VENV)
