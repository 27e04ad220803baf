# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
#
# Each Python of the supported range gets its own virtual environment:
#   .venv        CPython 3.13, the newest: lint, the suite, the demo; extras tf, jax
#   .venv-3.10   CPython 3.10, the oldest: the suite; extra tf (JAX for 3.10 stopped at 0.4.x)
#   .venv-3.11   CPython 3.11 with PyTorch's CPU build (the wheel these machines keep on disk;
#                on other Pythons pip takes a several-GB CUDA build): the tests marked torch
# An interpreter is found under pyenv first, then on PATH; set PYTHON, PYTHON_OLDEST or
# PYTHON_TORCH to choose another.
find_python = $(or $(lastword $(sort $(wildcard $(shell pyenv root 2>/dev/null)/versions/$(1).*/bin/python$(1) $(HOME)/.pyenv/versions/$(1).*/bin/python$(1)))),$(shell command -v python$(1) 2>/dev/null),python$(1))

PYTHON ?= $(call find_python,3.13)
PYTHON_OLDEST ?= $(call find_python,3.10)
PYTHON_TORCH ?= $(call find_python,3.11)
TORCH ?= torch==2.13.0
VENV ?= .venv
VENV_OLDEST ?= .venv-3.10
VENV_TORCH ?= .venv-3.11
PY := $(VENV)/bin/python
PIP_INSTALL = -m pip install --quiet --disable-pip-version-check
# pip itself is upgraded first: the resolver of the pip that CPython 3.10 ships (23.x) backtracked
# for over 30 minutes on this project's dependencies; pip 26 resolves them in ~40 s.
UPGRADE_PIP = -m pip install --quiet --disable-pip-version-check --upgrade pip
# compat: the project root goes on sys.path, so Python started beside the clone (itself a
# folder named shards) still imports the package rather than that folder.
EDITABLE = --config-settings editable_mode=compat

.PHONY: demo test test-fast test-newest test-oldest test-torch lint fmt docs bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python $(UPGRADE_PIP)
	$(VENV)/bin/python $(PIP_INSTALL) -e '.[tf,jax,test,bench,docs]' $(EDITABLE)
	touch $@

$(VENV_OLDEST)/.installed: pyproject.toml
	$(PYTHON_OLDEST) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/python $(UPGRADE_PIP)
	$(VENV_OLDEST)/bin/python $(PIP_INSTALL) -e '.[tf,test,docs]' $(EDITABLE)
	touch $@

$(VENV_TORCH)/.installed: pyproject.toml
	$(PYTHON_TORCH) -m venv $(VENV_TORCH)
	$(VENV_TORCH)/bin/python $(UPGRADE_PIP)
	$(VENV_TORCH)/bin/python $(PIP_INSTALL) '$(TORCH)'
	$(VENV_TORCH)/bin/python $(PIP_INSTALL) -e '.[torch,keras,test,bench]' $(EDITABLE)
	touch $@

demo: $(VENV)/.installed
	$(PY) jobs/demo.py demo-data

# What CI runs: the linter, the formatter's check, the type checker, then the suite on the
# newest and the oldest supported Python, and the PyTorch tests.
test: lint test-newest test-oldest test-torch

# The inner loop: the tests that start no Ray and no other process (under two minutes here).
test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow and not torch" -q

test-newest: $(VENV)/.installed
	$(PY) -m pytest -m "not torch"

# The oldest Python runs every test that starts no Ray (the library's logic, the readers on runs
# written without Ray, the formats) and the `oldest` end-to-end cases on Ray; the cluster,
# fault and training cases, whose behaviour is Ray's and the frameworks', run once, above.
test-oldest: $(VENV_OLDEST)/.installed
	$(VENV_OLDEST)/bin/python -m pytest -m "(not slow or oldest) and not torch and not jax"

test-torch: $(VENV_TORCH)/.installed
	$(VENV_TORCH)/bin/python -m pytest -m torch tests/test_torch_*.py

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

fmt: $(VENV)/.installed
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The API reference, generated from the docstrings into docs/api/ (open docs/api/index.html).
docs: $(VENV)/.installed
	$(PY) -m pdoc --docformat google --output-directory docs/api shards shards.dataset shards.read.dataset shards.read.remote shards.tf.adapters

bench: $(VENV)/.installed
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(VENV_OLDEST) $(VENV_TORCH) demo-data bench-results docs/api dist build .pytest_cache .hypothesis .mypy_cache .ruff_cache
