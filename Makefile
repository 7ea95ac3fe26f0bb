# Two entry points on a fresh machine: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv when it is missing and (re)install the package when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: repro test test-slow lint format bench bench-fast bench-fast-10min clean-state

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

clean-state:  # forget interrupted-training state and download caches
	rm -rf .cache
