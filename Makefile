# Two commands set everything up on a fresh clone:
#   make quickstart   create .venv if missing, install, run the embedded default end to end
#   make test         create .venv if missing, install with dev extras, run the tests
#   make gpu-check OUT=folder   on a GPU machine: GPU tests, kernel and 7B-shape benchmarks, results in folder
# A CUDA build of torch already in .venv is kept; otherwise torch is pinned to the CPU build
# (torch==2.13.0) in the same pip command, so pip never pulls multi-GB CUDA wheels by accident.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/quickstart.yaml
TORCH_CPU_PIN ?= torch==2.13.0
PYTEST_ARGS ?=
VENV_FLAGS ?=

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: quickstart test install install-dev clean gpu-check

ifneq ($(filter gpu-check,$(MAKECMDGOALS)),)
ifeq ($(strip $(OUT)),)
$(error make gpu-check needs the results folder: make gpu-check OUT=folder)
endif
endif

$(PY):
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip

define pip_install
	@if $(PY) -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; \
	then torch_spec=""; echo "keeping the CUDA torch found in $(VENV)"; \
	else torch_spec="$(TORCH_CPU_PIN)"; fi; \
	$(PY) -m pip install -q $$torch_spec -e "$(1)"
	@touch $(2)
endef

$(VENV)/.installed: pyproject.toml | $(PY)
	$(call pip_install,.,$@)

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(call pip_install,.[dev],$@)
	@touch $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

quickstart: $(VENV)/.installed
	$(VENV)/bin/ckf train --config $(CONFIG)

test: $(VENV)/.installed-dev
	$(PY) -m pytest $(PYTEST_ARGS)

# A .venv created here sees the system python's packages, so a CUDA torch installed there is kept
# (the install above keeps any CUDA torch it finds). Steps and outputs: ckf_dist/bench/gpu_check.py.
gpu-check: VENV_FLAGS = --system-site-packages
gpu-check: $(VENV)/.installed-dev
	$(PY) -m ckf_dist.bench.gpu_check --out "$(OUT)"

clean:
	rm -rf runs .pytest_cache
