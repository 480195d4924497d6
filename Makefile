# `make demo` and `make test` each set everything up on a fresh machine (see README.md).
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch lies on this machine's disk; override for a GPU machine, e.g.
#   make install TORCH="torch==2.9.1 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test clean

install: $(VENV)/.installed

# torch first, pinned: `pip install -e .` alone would resolve `torch` to a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(BIN)/python scripts/demo.py

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
