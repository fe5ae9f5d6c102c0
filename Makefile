# The two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
# `make lint` and `make docs` add the linters / the site builder to the same .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH := torch==2.14.1 torchvision==0.29.1
# Two workers: the suite is CPU-bound and the reference machine has two cores.
PYTEST_WORKERS ?= 2
# Whole files to a worker: module-scoped fixtures (trained runs) are then built once, not once per worker.

.PHONY: setup demo test lint docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[test]'
	touch $@

$(VENV)/.installed-%: $(VENV)/.installed
	$(PIP) install -q -e '.[$*]'
	touch $@

demo: setup
	$(VENV)/bin/qdg-deploy demo

test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

lint: $(VENV)/.installed-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

docs: $(VENV)/.installed-docs
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf runs site .pytest_cache
