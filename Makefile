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

.PHONY: install run test test-fast bench validation clean browser-test

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

# The web app in headless Chromium (installs chromium / playwright where it can); screenshots in artifacts/screenshots.
browser-test: $(STAMP)
	PY=$(PY) bash .ci/browser-test.sh

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# Measure the validation matrices and compare with planner.estimate; rewrites docs/validation/.
# fake: full-scale shapes on the CPU (minutes); cpu: tiny configs with real tensors + merge checks.
validation: $(STAMP)
	@rc=0; \
	$(PY) -m executors.validate --matrix executors/matrices/default.json --device fake --quiet \
		--json docs/validation/fake.json --markdown docs/validation/fake.md || rc=1; \
	$(PY) -m executors.validate --matrix executors/matrices/cpu-small.json --device cpu --quiet \
		--json docs/validation/cpu-small.json --markdown docs/validation/cpu-small.md || rc=1; \
	exit $$rc
