# Two set-up commands on a fresh machine: `make demo` and `make test` (each creates .venv if needed).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTEST  := $(BIN)/python -m pytest
STAMP   := $(VENV)/.installed
MLFLOW_PORT ?= 5000
MLFLOW_DIR  ?= runs/mlflow-server
# One web worker: enough for one user's studies on 127.0.0.1, and MLflow's default of 4 makes
# uvicorn's supervisor kill workers that boot slower than its health check on a busy 2-core box.
MLFLOW_WORKERS ?= 1

.PHONY: install demo lint test test-fast smoke bench mlflow prepare clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

data/synthetic/dataset.csv: | $(STAMP)
	$(BIN)/python jobs/make_synthetic.py --out data/synthetic --n 400

## demo: synthetic FracAtlas-like data + a real 4-trial Optuna/ASHA study on CPU, tracked in MLflow
## (each `make demo` replaces the previous demo study; its MLflow runs stay)
demo: $(STAMP) data/synthetic/dataset.csv
	$(BIN)/python jobs/tune.py --config jobs/studies/demo.yaml --overwrite

## lint: ruff's checks and format check, the stages' one-way imports (import-linter), module and
## function sizes (tests/test_layout.py); settings in pyproject.toml; `ruff format .` fixes the layout
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(PYTEST) -q -p no:cacheprovider tests/test_layout.py

## test: lint, then the whole suite (unit + tiny real Ray/MLflow runs); `make test-fast` skips the slow ones
test: lint
	PYTHONFAULTHANDLER=1 $(PYTEST) -q --durations=20

test-fast: $(STAMP)
	$(PYTEST) -q -m "not slow and not integration"

## smoke: only the tiny end-to-end Ray runs
smoke: $(STAMP)
	$(PYTEST) -q -m integration

## prepare: audit real FracAtlas and write its manifest + data report (ROOT=path)
prepare: $(STAMP)
	$(BIN)/python jobs/prepare.py --root $(or $(ROOT),../shared/fracatlas)

## bench: throughput benchmarks (CPU sizes here; GPU sizes when CUDA is present)
bench: $(STAMP)
	$(BIN)/python benchmarks/data_throughput.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/tune_overhead.py

## mlflow: a tracking server on 127.0.0.1 (sqlite backend, local artifacts); set tracking.uri=http://127.0.0.1:$(MLFLOW_PORT)
mlflow: $(STAMP)
	mkdir -p $(MLFLOW_DIR)
	$(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) --workers $(MLFLOW_WORKERS) \
		--backend-store-uri sqlite:///$(abspath $(MLFLOW_DIR))/mlflow.db \
		--artifacts-destination $(abspath $(MLFLOW_DIR))/artifacts

clean:
	rm -rf runs data/synthetic .pytest_cache
