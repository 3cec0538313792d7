# gat-study: one command to set up and run the quickstart study, one to set up and run the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup quickstart test test-fast bench clean

# torch and torchvision first, pinned to the builds that ship a working torchvision;
# then the project with its test extras.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

quickstart: setup
	$(VENV)/bin/gat-study run studies/quickstart.yaml
	$(VENV)/bin/gat-study analyze studies/quickstart.yaml

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m bench.run_all

clean:
	rm -rf runs .pytest_cache
