# The README's commands. `make run` and `make test` set up .venv on first use, then reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test check sweep ui server bench lint clean-store

$(INSTALLED): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,optuna]"
	# Bytecode for the editable sources too: shells with PYTHONDONTWRITEBYTECODE=1 never cache it.
	$(BIN)/python -m compileall -q src
	touch $@

run: $(INSTALLED)  ## train the default experiment into ./mlruns
	$(BIN)/linreg-train

# Test workers (pytest-xdist): the suite waits on processes, servers and SLURM as much as it
# computes, so a third worker helps on 2 cores. Tests that share something (the SLURM cluster)
# carry one xdist_group and run on one worker (--dist loadgroup).
TEST_WORKERS ?= 3

test: $(INSTALLED)  ## the whole suite (~N min on 2 cores)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

check: $(INSTALLED)  ## the fast tier (~N min): lint, import contracts, unit and config tests, one real run, one real 2-job sweep
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow or check"

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
