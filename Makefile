# Brain-MRI edge pipeline. `make all` runs everything on the embedded synthetic
# phantoms; `DATA=path/to/Training make distill tflite parity` on real data.
#
# Flags per stage (each goes to that stage's command only; `python -m <stage> --help` lists them):
#   TRAIN_ARGS (ARGS is the same) -> python -m train       e.g. make all TRAIN_ARGS="--student-epochs 5"
#   CONVERT_ARGS                  -> python -m convert     e.g. CONVERT_ARGS="--calibration-size 100"
#   PARITY_ARGS                   -> python -m convert.parity
#   BENCH_ARGS                    -> python -m bench
#   SHIP_ARGS                     -> python -m convert.ship
# RUN names the run folder (artifacts/$(RUN)); DATA / TEST_DATA point at real class-per-folder data.
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
  DATA_FLAGS := --preset synthetic
else
  RUN ?= real
  DATA_FLAGS := --data $(DATA) $(if $(TEST_DATA),--test-data $(TEST_DATA),)
endif
# `make OUT=path ...` points every stage at any run folder (tests use a temporary one).
OUT := artifacts/$(RUN)
ARGS ?=
TRAIN_ARGS ?= $(ARGS)
CONVERT_ARGS ?=
PARITY_ARGS ?=
BENCH_ARGS ?=
SHIP_ARGS ?=

.PHONY: all venv data distill tflite parity ship test test-fast test-train test-train-run test-train-rest test-device lint bench pi-smoke clean

all: data distill tflite parity

# Environments install only when their requirements change (stamp files). The device package is installed
# editable (pyproject.toml); train/, convert/ and bench/ run from this checkout (every command runs from here).
$(VENV)/.stamp: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e ".[train,dev]"
	touch $@

$(DVENV)/.stamp: device/requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(DVENV)
	$(DVENV)/bin/pip install -q -e ".[device,dev]"
	touch $@

venv: $(VENV)/.stamp $(DVENV)/.stamp

data/synthetic/.stamp: $(VENV)/.stamp train/phantom.py
	$(PY) -m train.phantom --out data/synthetic
	touch $@

data: data/synthetic/.stamp

distill: $(VENV)/.stamp $(if $(strip $(DATA)),,data/synthetic/.stamp)
	$(PY) -m train $(DATA_FLAGS) --out $(OUT) $(TRAIN_ARGS)

tflite: $(VENV)/.stamp
	$(PY) -m convert --run $(OUT) $(CONVERT_ARGS)

parity: $(VENV)/.stamp
	$(PY) -m convert.parity --run $(OUT) $(PARITY_ARGS)

# Scans from other sources, for evaluation only (never trained, calibrated or tuned on); skipped when absent.
EXTERNAL ?= ../shared/data/external-dev

bench: $(VENV)/.stamp $(DVENV)/.stamp
	$(PY) -m bench --run $(OUT) --python $(DPY) --python $(PY) $(BENCH_ARGS)
	if [ -d "$(EXTERNAL)" ]; then $(PY) -m bench.external --run $(OUT) --data $(EXTERNAL); fi

# Tests: training/convert side in .venv, device side in .venv-device (no TensorFlow there).
# test-fast skips the end-to-end checks marked slow (conversion processes, EfficientNet, MirroredStrategy).
# make test runs two lanes side by side (TensorFlow's tracing and the device CLI's processes are mostly
# single-threaded): the tests that share the session's tiny training run, and the others then the device tests.
# -O keeps each part's output together.
test: $(VENV)/.stamp $(DVENV)/.stamp
	$(MAKE) --no-print-directory -j2 -O test-train-run test-train-rest test-device

test-fast: $(VENV)/.stamp $(DVENV)/.stamp
	$(PY) -m pytest -q -m "not slow" tests --ignore=tests/device
	$(DPY) -m pytest -q -m "not slow" tests/device

test-train: $(VENV)/.stamp
	$(PY) -m pytest -q tests --ignore=tests/device

test-train-run: $(VENV)/.stamp
	$(PY) -m pytest -q -m tiny_run tests --ignore=tests/device

test-train-rest: $(VENV)/.stamp
	$(PY) -m pytest -q -m "not tiny_run" tests --ignore=tests/device

# The device venv has tflite-runtime (Python <= 3.11); the LiteRT cases run in .venv, which has LiteRT.
test-device: $(DVENV)/.stamp $(VENV)/.stamp
	$(DPY) -m pytest -q -rs tests/device
	$(PY) -m pytest -q tests/device -k litert

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check .

pi-smoke: $(VENV)/.stamp $(DVENV)/.stamp
	bash tools/pi_smoke.sh

clean:
	rm -rf artifacts data

ship: $(VENV)/.stamp
	$(PY) -m convert.ship --run $(OUT) $(SHIP_ARGS)
