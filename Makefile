# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint fmt docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# compat: the project root goes on sys.path, so Python started beside the clone (itself a
	# folder named shards) still imports the package rather than that folder.
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,bench,docs]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: $(STAMP)
	$(PY) jobs/demo.py demo-data

# What CI runs: the linter, the formatter's check, the type checker, then the suite.
test: lint
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

fmt: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The API reference, generated from the docstrings into docs/api/ (open docs/api/index.html).
docs: $(STAMP)
	$(PY) -m pdoc --docformat google --output-directory docs/api shards shards.tf.adapters

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) demo-data bench-results docs/api dist build .pytest_cache .hypothesis .mypy_cache .ruff_cache
