# textrnn: `make demo` and `make test` are the two set-up commands; both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Offline and quiet by default: no telemetry from the libraries we drive.
export MLFLOW_DISABLE_TELEMETRY := true
export ORT_DISABLE_TELEMETRY := 1
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_DISABLE_TELEMETRY := 1
DEMO_PARAMS := --set data.source=sample

.PHONY: demo test install clean

$(BIN)/textrnn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 first: on a CPU machine pip takes the local CPU wheel; on a GPU host the CUDA wheel.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/textrnn

demo: install
	PREFECT_HOME=$(CURDIR)/.prefect $(BIN)/textrnn pipeline $(DEMO_PARAMS)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf data models metrics plots mlruns mlartifacts mlflow.db .cache .prefect

# ---- Prefect: a local server, workers and the deployments in prefect.yaml ("Run on a schedule") ----
# `make prefect-server` in one terminal, `make deploy` once, then one `make worker` per pool (and per GPU).
PREFECT_PORT ?= 4200
PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api
POOL ?= gpu
GPU ?=
WORKER_NAME ?= $(POOL)-$(shell hostname -s)$(if $(GPU),-gpu$(GPU))
# Where workers find this checkout (prefect.yaml's working_dir); resolved when deploying.
TEXTRNN_HOME ?= $(CURDIR)

.PHONY: prefect-server worker deploy

prefect-server: install
	PREFECT_HOME=$(CURDIR)/.prefect $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

# One flow run at a time per worker (--limit 1); a gpu worker also takes turns on its GPU through the
# global concurrency limit `gpu:<worker name>` that train-variant holds, created here if missing.
worker: install
	export PREFECT_API_URL=$(PREFECT_API_URL); \
	if [ "$(POOL)" = gpu ]; then \
	  $(BIN)/prefect gcl inspect "gpu:$(WORKER_NAME)" >/dev/null 2>&1 || \
	    $(BIN)/prefect --no-prompt gcl create "gpu:$(WORKER_NAME)" --limit 1 || exit 1; \
	fi; \
	$(if $(GPU),CUDA_VISIBLE_DEVICES=$(GPU)) $(BIN)/prefect worker start --pool $(POOL) --type process \
	  --name $(WORKER_NAME) --limit 1

deploy: install
	export PREFECT_API_URL=$(PREFECT_API_URL) TEXTRNN_HOME=$(TEXTRNN_HOME); \
	for pool in cpu gpu; do \
	  $(BIN)/prefect work-pool inspect $$pool >/dev/null 2>&1 || \
	    $(BIN)/prefect --no-prompt work-pool create $$pool --type process || exit 1; \
	done; \
	$(BIN)/prefect --no-prompt deploy --all

# ---- Benchmarks (issue 8): not part of `make test`; tensorflow-cpu comes only with the `bench` extra ----
# Every figure uses BENCH_THREADS threads on both sides; results land in bench/results/, and bench/readme.py
# writes their tables into the README. Run it on an otherwise idle machine: other work skews every figure.
BENCH_THREADS ?= 2
BENCH_EPOCHS ?= 2

.PHONY: bench

bench: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/train_throughput.py --threads $(BENCH_THREADS)
	$(BIN)/python bench/inference.py --threads $(BENCH_THREADS)
	$(BIN)/python bench/compare.py --threads $(BENCH_THREADS) --epochs $(BENCH_EPOCHS)
	$(BIN)/python bench/readme.py

# ---- Scale-out smoke test (issue 7): the team stack's engines, without Docker ----
# PostgreSQL from the Debian package (installed here when missing, as in .ci/run), MLflow and Prefect servers
# on it, a cpu and two gpu process workers; nightly-train on three variants, then again while one gpu worker
# is killed mid-run. Five to seven minutes on a busy 2-core machine; every process it starts is stopped.
.PHONY: scale-out-smoke

scale-out-smoke: install
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  echo "installing PostgreSQL (Debian package postgresql)"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
	$(BIN)/python -m pytest -q tests/pipeline/test_scale_out.py

# ---- Multi-host proof (issue 13): the distributed pipeline across separate hosts, on this one machine ----
# Network namespaces joined by veth links (iproute2), each host with a private mount namespace (util-linux)
# holding its own copy of the checkout: a server host (MLflow, Prefect), a pipeline host, two gpu hosts.
# Needs root; about a minute or two on a 2-core machine; every namespace, mount and process is removed after.
.PHONY: multihost

multihost: install
	@command -v ip >/dev/null && command -v nsenter >/dev/null || { \
	  echo "installing iproute2 and util-linux (Debian packages)"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 util-linux >/dev/null; }
	TEXTRNN_REQUIRE_MULTIHOST=1 $(BIN)/python -m pytest -q tests/pipeline/test_multihost.py
