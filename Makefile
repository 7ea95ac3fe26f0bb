# Two entry points on a fresh machine: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv when it is missing and (re)install the package when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
RECIPE ?= cpu-quick
SEEDS ?=

.PHONY: repro test test-slow test-scaling lint format plots exp record results ship mlflow-server mlflow-server-stop \
	bench gpu-prep clean-state

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

repro: $(VENV)/.installed  # params.yaml = the cpu-quick recipe; reads data/cifake.zip when it is there, else Kaggle
	$(BIN)/dvc repro

test: $(VENV)/.installed  # one worker per core; the long end-to-end test first, the idle worker steals the rest
	$(BIN)/python -m pytest -n auto --dist worksteal

test-slow: $(VENV)/.installed  # real data (cifake-small.zip, cifake-large.zip in REALFAKE_DATA_DIR, else data/)
	$(BIN)/python -m pytest -m slow

test-scaling: $(VENV)/.installed  # PostgreSQL + an MLflow server (installed if missing), two-process training
	REALFAKE_REQUIRE_SERVER=1 $(BIN)/python -m pytest -m 'server or multihost'

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

plots: $(VENV)/.installed  # dvc_plots/index.html and one PNG per plot, offline; make plots REVS="HEAD fast-30min-seed42"
	$(BIN)/python -m realfake.pipeline.plots $(REVS)

exp: $(VENV)/.installed  # make exp RECIPE=fast-30min [SEEDS="42 1 2"]: one named DVC experiment per seed
	$(BIN)/python -m realfake.pipeline.recipes run $(RECIPE) $(if $(SEEDS),--seeds $(SEEDS))

record: $(VENV)/.installed  # make record RECIPE=fast-30min: results/<recipe>.json from its experiments
	$(BIN)/python -m realfake.pipeline.recipes record $(RECIPE) $(if $(SEEDS),--seeds $(SEEDS))

results: $(VENV)/.installed  # docs/results.md and the README's results table, from results/*.json
	$(BIN)/python -m realfake.pipeline.recipes table

ship: $(VENV)/.installed  # the fast-60min recipe's model (seed 42) into the package, with its card data
	$(BIN)/python -m realfake.pipeline.recipes ship fast-60min --seeds 42

mlflow-server: $(VENV)/.installed  # PostgreSQL + MLflow server on 127.0.0.1; prints the MLFLOW_TRACKING_URI to use
	bash scripts/mlflow_server.sh start

mlflow-server-stop:
	bash scripts/mlflow_server.sh stop

bench: $(VENV)/.installed  # docs/benchmarks.md, on data/cifake.zip
	$(BIN)/python benchmarks/decode_and_noop.py
	$(BIN)/python benchmarks/train_throughput.py --models cnn --repeats 2
	bash benchmarks/train_stage_memory.sh

# Keras and what a GPU host without network or TensorFlow lacks of realfake's needs, as Python 3.12 wheels
GPU_WHEELS := keras==3.15.1 namex==0.1.0 optree==0.20.0 ruamel.yaml==0.19.1 wrapt==2.5.2

gpu-prep: $(VENV)/.installed  # .whl and .gpu for benchmarks/gpu_run.sh (docs/benchmarks.md)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		-d .whl $(GPU_WHEELS)
	$(BIN)/python benchmarks/ship_archive.py pack data/cifake.zip .gpu/cifake-large.jpgs.xz

clean-state:  # forget interrupted-training state and download caches
	rm -rf .cache/state .cache/downloads
