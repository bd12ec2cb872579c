PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test lint typecheck bench

run: $(VENV)/.installed
	$(PY) -m ui.serve   # streamlit run app.py, with the libraries and the default model loaded before the first visitor

# The lint and the type check run first: a finding fails `make test`, so CI enforces them.
test: lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .

typecheck: $(VENV)/.installed-test
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	@set -e; for f in benchmarks/*.py; do \
		[ -e "$$f" ] || continue; echo "== $$f"; $(PY) "$$f"; done

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(PY)
	$(PY) -m pip install -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(PY) -m pip install -r requirements-test.txt
	touch $@
