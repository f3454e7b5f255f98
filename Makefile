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
# `dvc plots show` offline: the page .dvc/config names (plots.html_template); `install` builds it (below).
VEGA_DIR := .vega
PLOTS_PAGE := $(VEGA_DIR)/dvc_plots.html
VEGA_PACKAGES := vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0

.PHONY: demo test install clean

$(BIN)/textrnn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 first: on a CPU machine pip takes the local CPU wheel; on a GPU host the CUDA wheel.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/textrnn $(PLOTS_PAGE)

demo: install
	PREFECT_HOME=$(CURDIR)/.prefect $(BIN)/textrnn pipeline $(DEMO_PARAMS)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf data models metrics plots mlruns mlartifacts mlflow.db .cache .prefect

# ---- `dvc plots show` offline ----
# DVC's own page loads vega, vega-lite and vega-embed from a CDN, so offline it is blank. This inlines the
# builds of those npm packages (`npm pack`: the three tarballs, kept in $(VEGA_DIR); no node_modules) into
# docs/dvc_plots_template.html, so every page DVC writes is whole on its own: it renders offline, wherever it
# is written (-o) or copied. The majors are the ones DVC's page uses (its templates are Vega-Lite v5 specs).
# Without npm the page links the same builds on a CDN instead (as DVC's own does), so `dvc plots show` still works
# online, and says how to get the offline page.
$(PLOTS_PAGE): docs/dvc_plots_template.html Makefile
	@mkdir -p $(VEGA_DIR)
	@if ! command -v npm >/dev/null; then \
	  echo "note: npm not found: dvc plots pages will load vega from a CDN (install npm, then make install)" >&2; \
	  { sed '/<!-- VEGA_SCRIPTS/,$$d' $<; \
	    for package in $(VEGA_PACKAGES); do printf '<script src="https://cdn.jsdelivr.net/npm/%s"></script>\n' "$$package"; done; \
	    sed '1,/<!-- VEGA_SCRIPTS/d' $<; } > $@; \
	  exit 0; \
	fi; \
	cd $(VEGA_DIR) && for package in $(VEGA_PACKAGES); do \
	  [ -f "$${package%@*}-$${package#*@}.tgz" ] || npm pack --silent --prefer-offline --no-update-notifier "$$package" >/dev/null || exit 1; \
	done
	@command -v npm >/dev/null || exit 0; \
	{ sed '/<!-- VEGA_SCRIPTS/,$$d' $<; \
	  for package in $(VEGA_PACKAGES); do \
	    name=$${package%@*}; script=$$(tar -xzOf $(VEGA_DIR)/$$name-$${package#*@}.tgz package/build/$$name.min.js) || exit 1; \
	    if grep -qi '</script' <<<"$$script"; then echo "$$package: its build contains </script" >&2; exit 1; fi; \
	    printf '<script>/* %s, from npm */\n%s\n</script>\n' "$$package" "$$script"; \
	  done; \
	  sed '1,/<!-- VEGA_SCRIPTS/d' $<; } > $@.tmp
	@! command -v npm >/dev/null || mv $@.tmp $@

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
