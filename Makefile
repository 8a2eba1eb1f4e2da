# ehr_rlvr: every command a user or CI runs. `make demo` and `make test` set everything up on a fresh machine
# (Python 3.11 + pip). All nbdev calls go through this file so a move to nbdev 3 is a one-file change.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
CONFIG ?= configs/demo.yaml
RUN_ID ?= demo
SEEDS ?=
PYTEST_ARGS ?=
# CPU machines get the CPU build of torch (no CUDA wheels); a machine with nvidia-smi gets the default build.
# Packages pip must install without their dependencies (settings.ini: nodeps_requirements): the model preset's package.
NODEPS_REQUIREMENTS := $(shell sed -n 's/^nodeps_requirements *= *//p' settings.ini)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIP_ARGS ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,--extra-index-url $(TORCH_CPU_INDEX) --timeout 15 --retries 1)

export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: help install demo demo-seeds test check export clean-nbs lab clean nbdev-test pytest readme docs preview

help:
	@echo "make demo    run the embedded EHRMIND pipeline (configs/demo.yaml) into runs/$(RUN_ID)/ (one seed: a quick look)"
	@echo "make demo-seeds  the same over seeds 0 1 2 with the cross-seed report (runs/$(RUN_ID)-seeds/): the demo's claims"
	@echo "make test    sync gate + notebook tests + pytest"
	@echo "make lab     JupyterLab on nbs/"
	@echo "make export  notebooks -> ehr_rlvr/ (and README.md)"
	@echo "make check   sync gate: nbdev_clean and nbdev_export must leave no diff"
	@echo "make clean   remove build leftovers (keeps .venv and runs/)"

# Install once; re-running skips an install that is already current (stamp newer than settings.ini/setup.py).
$(STAMP): settings.ini setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_PIP_ARGS) "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev,docs]"
	$(BIN)/pip install -q --no-deps $(NODEPS_REQUIREMENTS)
	@touch $(STAMP)

install: $(STAMP)

# One seed is one sample (a quick look); `make demo SEEDS="0 1 2"` or `make demo-seeds` gives the cross-seed report.
demo: $(STAMP)
	$(BIN)/ehr-rlvr pipeline $(CONFIG) --run-id $(RUN_ID)$(if $(SEEDS),-seeds --seeds $(SEEDS))

demo-seeds: $(STAMP)
	$(BIN)/ehr-rlvr pipeline $(CONFIG) --run-id $(RUN_ID)-seeds --seeds 0 1 2

test: $(STAMP)
	$(MAKE) --no-print-directory check
	$(MAKE) --no-print-directory nbdev-test
	$(MAKE) --no-print-directory pytest

nbdev-test: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2 --timing

pytest: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS) tests

# The sync gate: cleaning and exporting must not change any notebook or module, and README.md must match index.ipynb.
check: $(STAMP)
	@before=$$(find nbs ehr_rlvr -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' | sort | xargs sha256sum); \
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export && \
	after=$$(find nbs ehr_rlvr -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' | sort | xargs sha256sum); \
	if [ "$$before" != "$$after" ]; then echo "sync gate FAILED: nbdev_clean/nbdev_export changed these files:"; \
	  diff <(echo "$$before") <(echo "$$after") | grep '^[<>]' | awk '{print "  " $$3}' | sort -u; \
	  echo "Run 'make export', review and commit."; exit 1; fi
	$(BIN)/python tools/readme.py --check
	@echo "sync gate: OK"

export: $(STAMP)
	$(BIN)/nbdev_clean
	$(BIN)/nbdev_export
	$(BIN)/python tools/readme.py

lab: $(STAMP)
	$(BIN)/jupyter lab nbs $(if $(filter 0,$(shell id -u)),--allow-root)  # root, as in a container, needs --allow-root

clean:
	rm -rf _proc _docs build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +

# Docs site without Quarto: nbdev-processed notebooks rendered by Sphinx + myst-nb into _docs/ (tools/build_docs.py).
# `make docs` first runs the smoke pipeline (runs/docs-smoke/) so the pipeline pages show executed outputs;
# DOCS_ARGS= skips it (stage pages then show the unexecuted notebooks). nbdev_docs still works where Quarto exists.
DOCS_ARGS ?= --smoke
docs: $(STAMP)
	$(BIN)/python tools/build_docs.py $(DOCS_ARGS)

PORT ?= 8000
preview:
	@test -f _docs/index.html || { echo "no site yet: run 'make docs' first"; exit 1; }
	@echo "serving _docs/ on http://localhost:$(PORT)/ (Ctrl-C stops)"
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -m http.server $(PORT) --bind 127.0.0.1 --directory _docs
