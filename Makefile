# mae-tutorial: `make` (or `make help`) lists the targets.
# Every target that runs Python first creates .venv if it is missing, so `make demo` and
# `make test` each work on a fresh machine.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUFF := $(VENV)/bin/ruff
# Written after a successful install; reinstalls only when the requirements change.
STAMP := $(VENV)/.installed

# This project's CI and development machines carry this CPU wheel of PyTorch on local disk, so it
# installs in seconds there (an unpinned `torch` would pull a multi-GB CUDA build instead).
# On a GPU machine take the build pip picks for it: `make test TORCH=torch`.
TORCH ?= torch==2.13.0

# MAE_TUTORIAL_DATA names a folder holding `cifar-10-batches-py`. Unset, it defaults to the
# offline copy beside this repository when there is one; otherwise the loader downloads CIFAR-10.
ifeq ($(MAE_TUTORIAL_DATA),)
ifneq ($(wildcard ../shared/data/cifar-10-batches-py),)
export MAE_TUTORIAL_DATA := $(abspath ../shared/data)
endif
endif

DEMO_OUT ?= runs/demo
# Notebook runs and book builds share the machine politely.
NICE ?= nice -n 10
JB := $(VENV)/bin/jupyter-book
CHAPTERS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: help venv test test-fast lint format book execute export notebooks figures demo student clean

help: ## list the targets (the default)
	@grep -E '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install '$(TORCH)'
	# requirements.txt is pyproject.toml's dependencies and extras (tests/test_requirements.py).
	$(PY) -m pip install -r requirements.txt -e .
	# A benchmark peer (benchmarks/train_step.py); --no-deps keeps torchvision and its CUDA torch out.
	$(PY) -m pip install --no-deps vit-pytorch
	touch $@

venv: $(STAMP) ## create .venv and install the package, the book's and the tests' requirements

test: $(STAMP) ## what CI runs: lint, check formatting, every test, every chapter in quick mode
	$(RUFF) check .
	$(RUFF) format --check .
	TQDM_DISABLE=1 $(PY) -m pytest -q
	$(MAKE) --no-print-directory notebooks

# The edit-test loop: the tests marked `slow` (subprocesses, torchrun, training loops, the
# benchmarks' smoke runs, student copies run in quick mode) and the chapters are left to `make test`.
test-fast: $(STAMP) ## lint, check formatting, the tests not marked slow (no chapters)
	$(RUFF) check .
	$(RUFF) format --check .
	TQDM_DISABLE=1 $(PY) -m pytest -q -m "not slow"

# Quick mode shrinks every heavy cell; nbval runs each chapter top to bottom, fails on any error,
# and compares the outputs of the cells tagged `nbval-check-output` with the committed ones.
# notebooks/conftest.py refuses to run the chapters unless quick mode is set.
notebooks: $(STAMP) ## run every chapter in quick mode under nbval (part of `make test`)
	MAE_TUTORIAL_QUICK=1 TQDM_DISABLE=1 $(NICE) $(PY) -m pytest -q \
		--nbval-lax --nbval-current-env -p no:cacheprovider $(CHAPTERS)

lint: $(STAMP) ## ruff lint and format check, without the tests
	$(RUFF) check .
	$(RUFF) format --check .

format: $(STAMP) ## reformat the code and apply ruff's safe fixes
	$(RUFF) format .
	$(RUFF) check --fix .

book: $(STAMP) ## build the book into _build/html (warnings are errors; notebooks are not re-run)
	$(NICE) $(JB) build . --warningiserror --nitpick --keep-going

# Full mode: the outputs the book shows. Slow on a CPU; run it after changing a chapter.
execute: $(STAMP) ## re-run every chapter top to bottom in full mode, saving its outputs in place
	env -u MAE_TUTORIAL_QUICK TQDM_DISABLE=1 $(NICE) $(PY) -m mae_tutorial.notebook $(CHAPTERS)

export: $(STAMP) ## write the modules the chapters teach from their `#| export` cells
	$(PY) -m mae_tutorial.export
	$(RUFF) format --check mae_tutorial

figures: $(STAMP) ## redraw the figures of the book's prose pages (book/images)
	$(NICE) $(PY) book/make_figures.py

# Student copies stub out every solution region and clear the outputs; instructor copies are the
# chapters as committed. See book/instructors.md.
CLASSROOM ?= _build/classroom
student: $(STAMP) ## write student and instructor copies of the chapters into _build/classroom
	$(PY) -m mae_tutorial.classroom $(CHAPTERS) --out $(CLASSROOM)

demo: $(STAMP) ## pretrain a tiny MAE for one epoch on 2000 images, then draw reconstructions
	$(PY) -m mae_tutorial pretrain --preset tiny --epochs 1 --subset 2000 --out $(DEMO_OUT) --overwrite
	$(PY) -m mae_tutorial reconstruct --checkpoint $(DEMO_OUT)/checkpoint.pt --out $(DEMO_OUT)

clean: ## remove build outputs, caches and runs/demo (keeps .venv)
	rm -rf _build build dist *.egg-info .pytest_cache .ruff_cache $(DEMO_OUT)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
