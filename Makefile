# gat-study: one command to set up and run the quickstart study, one to set up and run the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup quickstart test test-fast bench results results-pages clean

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

# Results at CPU scale: every study of studies/ that runs on this machine (all but the GPU ones, which need
# weights and data it does not have), each resumed where its store stands, then docs/results/<study>.md
# rebuilt from the MLflow stores (`gat-study results`; the readings, docs/results/<study>.reading.md, are
# the hand-written part).  Several hours on 2 cores (each study file's header gives its own estimate).
# `make results-pages` only rebuilds the pages; `make results STUDIES="studies/a.yaml ..."` runs a subset.
GPU_STUDIES     := studies/imagenet256-gat.yaml
STUDIES         ?= $(filter-out $(GPU_STUDIES),$(sort $(wildcard studies/*.yaml)))
HOLDOUT_STUDIES := studies/cpu-scaling.yaml studies/isoflop.yaml   # pages with the held-out prediction (--holdout 1)

# the pages of $(STUDIES), shell text shared by the two targets (sets status=1 on a failure)
PAGES = plain="$(filter-out $(HOLDOUT_STUDIES),$(STUDIES))"; held="$(filter $(HOLDOUT_STUDIES),$(STUDIES))"; \
	if [ -n "$$plain" ]; then $(VENV)/bin/gat-study results $$plain || status=1; fi; \
	if [ -n "$$held" ]; then $(VENV)/bin/gat-study results --holdout 1 $$held || status=1; fi

results: setup
	@status=0; for study in $(STUDIES); do $(VENV)/bin/gat-study run $$study || status=1; done; \
	$(PAGES); exit $$status

# only the studies that already have a page: a study whose store holds no run of its file as it now stands
# (the quickstart, lr-sweep and photos were redesigned after their runs) has nothing to rebuild
results-pages: STUDIES := $(foreach s,$(STUDIES),$(if $(wildcard docs/results/$(basename $(notdir $(s))).md),$(s)))
results-pages: setup
	@status=0; $(PAGES); exit $$status

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m bench.run_all

clean:
	rm -rf runs .pytest_cache
