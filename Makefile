# Two commands a fresh machine needs: `make run` (the web app) and `make test` (the whole suite).
# Both create .venv and install the project with CPU torch pinned by constraints/cpu.txt.
# GPU box: install the CUDA build of the same torch first (see README), then `make install`.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONSTRAINTS := constraints/cpu.txt
STAMP := $(VENV)/.installed
PORT ?= 8501
PYTEST_ARGS ?=

.PHONY: install run test test-fast bench validation clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/streamlit run ui/app.py --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

test: $(STAMP)
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
