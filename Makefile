# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
SHARED ?= $(abspath ../shared)

# DVC runs stage commands through the shell: the venv must come first on PATH.
export PATH := $(BIN):$(PATH)
export TF_CPP_MIN_LOG_LEVEL := 2
# telemetry off (pipeline/telemetry.py sets the same for commands run without make)
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := False
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Keras looks for ImageNet weights in $KERAS_HOME/models; the demo seeds it from ../shared/weights.
export KERAS_HOME ?= $(CURDIR)/.keras

# System packages (Debian): only when missing; CI runs as root on a fresh machine.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT  := $(SUDO) apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends

.PHONY: install demo test test-deps bench stack stack-down start-fresh backup restore constraints app

# exact versions from constraints.txt (the tested environment); pyproject.toml keeps the supported ranges
$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# the Data Docs page assets, from npm (pipeline/datadocs.py lists them); refetched when that list changes
.vendor/datadocs/.installed: pipeline/datadocs.py $(VENV)/.installed
	@command -v npm >/dev/null || { $(APT) npm >/dev/null; }
	$(BIN)/python -m pipeline.datadocs --install
	touch $@

# `dvc plots show` pages with Vega inlined (from the same npm copies), so they open offline
.vendor/dvc-plots.html: pipeline/plots_page.py .vendor/datadocs/.installed
	$(BIN)/python -m pipeline.plots_page --install

install: $(VENV)/.installed .vendor/datadocs/.installed .vendor/dvc-plots.html

# after an upgrade that passed `make test`: pin the environment it passed in
constraints: $(VENV)/.installed
	{ sed -n '/^#/p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

demo: install
	@if [ -z "$$(ls -A data/raw 2>/dev/null)" ]; then $(BIN)/python -m pipeline.demo --out data/raw; fi
	@if [ -d "$(SHARED)/weights/keras/models" ]; then mkdir -p "$(KERAS_HOME)/models" && \
		cp -n "$(SHARED)"/weights/keras/models/*.h5 "$(KERAS_HOME)/models/"; fi
	$(BIN)/dvc add -q data/raw
	$(BIN)/dvc repro
	$(BIN)/dvc push -q
	@echo; echo "Done. Open reports/index.html. Runs: $$(sed -n 's/^MLFLOW_TRACKING_URI=//p' .stack/env 2>/dev/null || true)"
	@test -f .stack/env || echo "MLFLOW_DISABLE_TELEMETRY=true .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db, then http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning"

# From the demo to your own images (README "Your own images"): clears the demo's outputs, ledger and
# registry, never data/raw or data/labels; REMOVE_DEMO_IMAGES=1 also deletes the demo's own images.
start-fresh: install
	$(BIN)/python -m pipeline.fresh_start $(if $(REMOVE_DEMO_IMAGES),--demo-images) $(if $(YES),--yes)

# What cannot be recomputed, into $(BACKUP_DIR)/backup-<UTC time>/ (README "Operations")
BACKUP_DIR ?= backups
backup: install
	$(BIN)/python -m pipeline.backup create --to "$(BACKUP_DIR)"

restore: install
	@test -n "$(FROM)" || { echo "usage: make restore FROM=$(BACKUP_DIR)/backup-<time> (in a fresh clone)"; exit 1; }
	$(BIN)/python -m pipeline.backup restore "$(FROM)"

# PostgreSQL, S3 (SeaweedFS), MLflow and Prefect servers on loopback, data under .stack/ (docker/stack.py).
# They write .stack/env, which the stages, flows and predict read: `make demo` then runs against them.
stack: install
	$(BIN)/python docker/stack.py up

stack-down:
	$(BIN)/python docker/stack.py down

# the clinic's page on clinic.host:clinic.port (params.yaml); accounts: .venv/bin/python -m clinic users add NAME --role ROLE
app: install
	$(BIN)/python -m clinic serve

# system packages the tests need: Debian's chromium for the real-browser tests (headless, no
# download at run time), Debian's PostgreSQL for the stack tests and nginx for the stack's TLS front
test-deps:
	@command -v chromium >/dev/null || { $(APT) chromium >/dev/null; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(APT) postgresql >/dev/null; }
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { $(APT) nginx-light >/dev/null; }
	@command -v ip >/dev/null || test -x /usr/sbin/ip || { $(APT) iproute2 >/dev/null; }

# two pytest processes, whole modules each: most of a test's time is waiting on servers and stage
# subprocesses, so two side by side use the cores that one leaves idle more than half the time
TEST_WORKERS ?= 2
test: install test-deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: install
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/dedup_bench.py
	$(BIN)/python bench/train_bench.py
	$(BIN)/python bench/export_bench.py
