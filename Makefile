# Two commands matter: `make run` (set up and run the orchestrator) and `make test` (set up and run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test bench setup clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) launch.py $(ARGS)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(ARGS)

bench: setup
	$(PY) bench/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info
