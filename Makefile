# The two commands that matter: `make demo` and `make test`. Both set everything up.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test bench lint venv system-deps clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# DCMTK, Orthanc, dicom3tools and Chromium: the real peers the tests talk to.
system-deps:
	bash scripts/install-system-deps.sh

demo: venv
	$(VENV)/bin/lods demo

test: venv system-deps
	$(VENV)/bin/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

bench: venv system-deps
	$(PY) bench/ingest.py
	$(PY) bench/jobs.py
	$(PY) bench/pipeline.py
	$(PY) bench/vitals.py

lint: venv
	$(VENV)/bin/ruff check src tests bench reference_solutions
	$(VENV)/bin/ruff format --check src tests bench reference_solutions
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) lods-data bench/out
