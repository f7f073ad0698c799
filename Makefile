# Two commands matter: `make run` (set up and run the orchestrator) and `make test` (set up and run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
# Offline boards: `make wheelhouse` on a connected machine fills this folder; setup then installs only from it.
WHEELHOUSE ?= wheelhouse
# Another board's platform, e.g. PLATFORM=manylinux2014_aarch64 PYTHON_VERSION=3.10 for a Jetson.
PLATFORM ?=
PYTHON_VERSION ?=
PIP_SOURCE := $(if $(wildcard $(WHEELHOUSE)/*.whl),--no-index --find-links $(WHEELHOUSE),)
TARGET_ARGS := $(if $(PLATFORM),--only-binary=:all: --platform $(PLATFORM),) \
	$(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION),)
# pip evaluates environment markers against the interpreter running it, not the target: a 3.11 PC leaves out the
# back-ports a 3.10 board needs (tomli, exceptiongroup). The check walks the requirements with the target's markers.
CHECK := $(PYTHON) tools/wheelhouse_check.py $(if $(PLATFORM),--platform $(PLATFORM),) \
	$(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION),) $(WHEELHOUSE)
# rounds of adding what the target still lacks (each round adds the dependencies of the previous one)
FILL_ROUNDS := 1 2 3 4

.PHONY: run test bench setup clean wheelhouse

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(if $(PIP_SOURCE),,$(PY) -m pip install --quiet --upgrade pip)
	$(PY) -m pip install --quiet $(PIP_SOURCE) -e '.[test]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) launch.py $(ARGS)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(ARGS)

bench: setup
	$(PY) -m bench.run_all $(ARGS)

wheelhouse:
	$(PYTHON) -m pip download --quiet --dest $(WHEELHOUSE) $(TARGET_ARGS) '.[test]' 'setuptools>=61' wheel
	set -e; for round in $(FILL_ROUNDS); do \
	  missing="$$($(CHECK) --missing)"; [ -z "$$missing" ] && break; \
	  echo "adding for the target: $$missing"; \
	  $(PYTHON) -m pip download --quiet --no-deps --dest $(WHEELHOUSE) $(TARGET_ARGS) $$missing; \
	done
	$(CHECK)

clean:
	rm -rf $(VENV) *.egg-info
