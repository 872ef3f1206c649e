# Brain-MRI edge pipeline. `make all` runs everything on the embedded synthetic
# phantoms; `DATA=path/to/Training make distill tflite parity` on real data.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
DVENV := .venv-device
PY := $(VENV)/bin/python
DPY := $(DVENV)/bin/python

DATA ?=
TEST_DATA ?=
ifeq ($(strip $(DATA)),)
  RUN ?= synthetic
  TRAIN_ARGS := --preset synthetic
else
  RUN ?= real
  TRAIN_ARGS := --data $(DATA) $(if $(TEST_DATA),--test-data $(TEST_DATA),)
endif
OUT := artifacts/$(RUN)
ARGS ?=

.PHONY: all venv data distill tflite parity ship test test-fast test-train test-device lint bench pi-smoke clean

all: data distill tflite parity

# Environments install only when their requirements change (stamp files). The project itself is installed
# editable (pyproject.toml), so every module imports from anywhere without path tricks.
$(VENV)/.stamp: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e ".[train]"
	touch $@

$(DVENV)/.stamp: device/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(DVENV)
	$(DVENV)/bin/pip install -q -e ".[device]" pytest
	touch $@

venv: $(VENV)/.stamp $(DVENV)/.stamp

data/synthetic/.stamp: $(VENV)/.stamp train/phantom.py
	$(PY) -m train.phantom --out data/synthetic
	touch $@

data: data/synthetic/.stamp

distill: $(VENV)/.stamp $(if $(strip $(DATA)),,data/synthetic/.stamp)
	$(PY) -m train $(TRAIN_ARGS) --out $(OUT) $(ARGS)

tflite: $(VENV)/.stamp
	$(PY) -m convert --run $(OUT) $(ARGS)

parity: $(VENV)/.stamp
	$(PY) -m convert.parity --run $(OUT) $(ARGS)

# Scans from other sources, for evaluation only (never trained, calibrated or tuned on); skipped when absent.
EXTERNAL ?= ../shared/data/external-dev

bench: $(VENV)/.stamp $(DVENV)/.stamp
	$(PY) -m bench --run $(OUT) $(ARGS)
	if [ -d "$(EXTERNAL)" ]; then $(PY) -m bench.external --run $(OUT) --data $(EXTERNAL); fi

# Tests: training/convert side in .venv, device side in .venv-device (no TensorFlow there).
# test-fast skips the end-to-end checks marked slow (conversion processes, EfficientNet, MirroredStrategy).
test: test-train test-device

test-fast: $(VENV)/.stamp $(DVENV)/.stamp
	$(PY) -m pytest -q -m "not slow" tests --ignore=tests/device
	$(DPY) -m pytest -q -m "not slow" tests/device

test-train: $(VENV)/.stamp
	$(PY) -m pytest -q tests --ignore=tests/device

test-device: $(DVENV)/.stamp
	$(DPY) -m pytest -q tests/device

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check .

pi-smoke: $(VENV)/.stamp $(DVENV)/.stamp
	bash tools/pi_smoke.sh

clean:
	rm -rf artifacts data

ship: $(VENV)/.stamp
	$(PY) -m convert.ship --run $(OUT) $(ARGS)
