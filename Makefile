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
VARIANTS := $(shell $(PYTHON) -c "import yaml; print(' '.join(yaml.safe_load(open('params.yaml'))['variants']))" 2>/dev/null || echo rnn rnn_masked lstm gru bilstm bag)

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
	$(BIN)/textrnn prepare $(DEMO_PARAMS)
	$(BIN)/textrnn encode $(DEMO_PARAMS)
	for variant in $(VARIANTS); do \
	  $(BIN)/textrnn train --variant $$variant $(DEMO_PARAMS) || exit 1; \
	  $(BIN)/textrnn export --variant $$variant $(DEMO_PARAMS) || exit 1; \
	  $(BIN)/textrnn evaluate --variant $$variant $(DEMO_PARAMS) || exit 1; \
	done
	$(BIN)/textrnn compare $(DEMO_PARAMS)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf data artifacts models metrics plots mlruns mlartifacts mlflow.db .cache
