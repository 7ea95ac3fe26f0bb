# Two entry points on a fresh machine: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv when it is missing and (re)install the package when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: repro test test-slow lint format bench bench-fast bench-fast-10min gpu-prep clean-state

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

repro: $(VENV)/.installed
	$(BIN)/dvc repro

test: $(VENV)/.installed  # one worker per core; the long end-to-end test first, the idle worker steals the rest
	$(BIN)/python -m pytest -n auto --dist worksteal

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -m slow

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(VENV)/.installed  # the README's Benchmarks section, on ../shared/data/cifake-large.zip
	$(BIN)/python benchmarks/decode_and_noop.py
	$(BIN)/python benchmarks/train_throughput.py --models cnn --repeats 2
	bash benchmarks/train_stage_memory.sh

bench-fast: $(VENV)/.installed  # params.yaml's fast detector on the large archive, 3 seeds: about 100 minutes on 2 cores
	$(BIN)/python benchmarks/fast_detector.py --seeds 42 1 2 --name fast_detector_s2d_15epochs_b64

bench-fast-10min: $(VENV)/.installed  # the fast detector's 10-minute schedule, 3 seeds: about 30 minutes on 2 cores
	$(BIN)/python benchmarks/fast_detector.py --seeds 42 1 2 --epochs 6 --set 'stage_filters=[48,96,192]' \
		--name fast_detector_s2d_48_6epochs

# Keras and what the lent GPU machine's image lacks of its needs (and of realfake's), as Python 3.12 wheels
GPU_WHEELS := keras==3.15.1 namex==0.1.0 optree==0.20.0 ruamel.yaml==0.19.1

gpu-prep: $(VENV)/.installed  # .whl and .gpu for benchmarks/gpu_run.sh on a lent GPU machine (README: Benchmarks)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		-d .whl $(GPU_WHEELS)
	$(BIN)/python benchmarks/ship_archive.py pack ../shared/data/cifake-large.zip .gpu/cifake-large.jpgs.xz

clean-state:  # forget interrupted-training state and download caches
	rm -rf .cache
