# distcl: `make train` and `make test` do all the setup on a fresh Debian machine.
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# chromium: the headless browser of tests/test_mlflow_ui.py (driven by the playwright package)
APT_PKGS := pkg-config libopencv-dev libturbojpeg0-dev dataset-fashion-mnist wordnet-base shellcheck chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# torch/torchvision are pinned to the releases on this machine's disk (pip's cap resolves
# torch>=2.4 to them); elsewhere pip picks what the pyproject ranges allow.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install apt train test test-fast lint format bench clean

install: $(STAMP)

apt:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null; then \
	    echo "error: apt-get not found; install these system packages yourself: $$missing" >&2; exit 1; \
	  fi; \
	  echo "installing system packages: $$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing || \
	  { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; }; \
	fi

$(STAMP): pyproject.toml
	$(MAKE) apt
	[ -x $(PY) ] || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN) || $(PY) -m pip install -q 'torch>=2.4' 'torchvision>=0.19'
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

train: install
	mkdir -p results
	$(VENV)/bin/distcl train --summary-json results/summary.json

test: install
	$(VENV)/bin/pytest -q tests

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow" tests

lint: install
	$(VENV)/bin/ruff check distcl tests benchmarks
	$(VENV)/bin/ruff format --check distcl tests benchmarks
	shellcheck cluster/slurm/distcl.sbatch benchmarks/gpu_check.sh

format: install
	$(VENV)/bin/ruff format distcl tests benchmarks
	$(VENV)/bin/ruff check --fix distcl tests benchmarks

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf results runs mlflow.db mlruns .pytest_cache
