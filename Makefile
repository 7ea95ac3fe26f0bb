# Two entry points on a fresh machine: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv when it is missing and (re)install the package when pyproject.toml changes: `make repro` only
# what the pipeline needs (.venv/.installed-run), the other targets the dev extra too (.venv/.installed).
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
RECIPE ?= cpu-quick
SEEDS ?=
SET ?=
MODEL ?= fast_robust
SHIP_RECIPE ?= fast-robust-long

.PHONY: repro test test-slow test-scaling lint format plots exp record results compare ship mlflow-server \
	mlflow-server-stop bench gpu-prep clean-state

$(VENV)/.installed-run: pyproject.toml  # the package and what the pipeline needs (a current dev install has it all)
	if [ ! $(VENV)/.installed -nt pyproject.toml ]; then \
		test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
		$(BIN)/python -m pip install --quiet --upgrade pip && $(BIN)/python -m pip install --quiet -e .; \
	fi
	touch $@

$(VENV)/.installed: pyproject.toml  # the same with the dev extra (tests, ruff)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

repro: $(VENV)/.installed-run  # params.yaml = the cpu-quick recipe; reads data/cifake.zip when it is there, else Kaggle
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
	$(BIN)/python -m realfake.pipeline.plot_render $(REVS)

# make exp RECIPE=fast-30min [SEEDS="42 1 2"] [SET="models.fast.epochs=3 ..."]: one named DVC experiment per seed, each
# `dvc exp run --temp` (its own temporary copy: several can run at once, the workspace's files stay as they are);
# the recipe's and SET's keys are checked against params.yaml first
exp: $(VENV)/.installed-run
	$(BIN)/python -m realfake.pipeline.recipes run $(RECIPE) $(if $(SEEDS),--seeds $(SEEDS)) \
		$(foreach s,$(SET),--set '$(s)')

record: $(VENV)/.installed  # make record RECIPE=fast-30min: results/<recipe>.json from its experiments
	$(BIN)/python -m realfake.pipeline.recipes record $(RECIPE) $(if $(SEEDS),--seeds $(SEEDS))

results: $(VENV)/.installed  # docs/results.md and the README's results table, from results/*.json; the study table
	$(BIN)/python -m realfake.pipeline.recipes table
	$(BIN)/python -m realfake.pipeline.study_table

compare: $(VENV)/.installed-run  # one row per DVC experiment: changed params, headline metrics (< 120 columns)
	$(BIN)/python -m realfake.pipeline.compare

# make ship [MODEL=fast_robust] [SHIP_RECIPE=fast-robust-long]: that model of the recipe's seed-42 experiment into
# the package as the default detector (serving/detector/<recipe>/: <model>.keras, .detector.npz, .onnx, its card);
# the other shipped detectors stay; refuses to put another model into a recipe's folder
ship: $(VENV)/.installed
	$(BIN)/python -m realfake.pipeline.recipes ship $(SHIP_RECIPE) --model $(MODEL) --seeds 42

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

clean-state: $(VENV)/.installed-run  # forget interrupted and failed trainings' state, their lock files, the download cache
	$(BIN)/python -m realfake.pipeline.clean_state  # REALFAKE_STATE_DIR too; keeps what a running training holds
