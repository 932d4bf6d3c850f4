# The two commands a newcomer needs: `make demo` (the main job) and `make test` (the test suite).
# Each creates the virtual environment and installs the pinned dependencies first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast install lint format clean

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock -r requirements-dev.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/hematovision demo

test: $(STAMP)
	$(BIN)/python -m pytest -ra

# The fast loop: everything but the tests marked `slow` (Keras model, training, fuzzing, deploy
# validators, the browser, tests/integration). `make test` still runs them all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -ra -m "not slow"

# The habits CI enforces: lint, format, types on the core/store/service/exports/model layers, and
# the import contracts (the layers point one way; see docs/architecture.md).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache
