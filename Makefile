# The README's commands. `make run` and `make test` set up .venv on first use, then reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test sweep ui server bench lint clean-store

$(INSTALLED): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,optuna]"
	# Bytecode for the editable sources too: shells with PYTHONDONTWRITEBYTECODE=1 never cache it.
	$(BIN)/python -m compileall -q src
	touch $@

run: $(INSTALLED)  ## train the default experiment into ./mlruns
	$(BIN)/linreg-train

test: $(INSTALLED)  ## run the test suite
	$(BIN)/python -m pytest

sweep: $(INSTALLED)  ## the README's sweep: learning rate x batch size, 2 parallel workers
	$(BIN)/linreg-train -m experiment=lr_batch_grid hydra/launcher=joblib

ui: $(INSTALLED)  ## MLflow's UI over the project store, on 127.0.0.1
	$(BIN)/linreg-ui

bench: $(INSTALLED)  ## speed against the reference loop and scikit-learn
	$(BIN)/python bench/run.py

lint: $(INSTALLED)  ## ruff, and the import-linter contracts of pyproject.toml (the layers)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

server: $(INSTALLED)  ## an MLflow tracking server on 127.0.0.1:5000 over the project store
	$(BIN)/linreg-ui --port 5000
