# Two commands on a fresh machine: `make demo` and `make test`. Both install first when needed.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# A bare torch requirement makes pip fetch a multi-GB CUDA build: pin the CPU-capable 2.13.0 first,
# then everything else accepts the torch already there.
TORCH   := torch==2.13.0

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export WANDB_MODE ?= offline

.PHONY: install test test-fast demo bench tiny-model clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -n 2

test-fast: $(STAMP)
	$(BIN)/pytest -n 2 -m "not slow"

demo: $(STAMP)
	$(BIN)/recipe validate recipes/*.yaml recipes/base/*.yaml
	$(BIN)/recipe fit-check --gpu rtx2080 || true
	$(BIN)/recipe run recipes/tiny-demo.yaml --overwrite

bench: $(STAMP)
	$(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/calibration.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/packing.py

tiny-model: $(STAMP)
	$(BIN)/python -m recipecli.train.tiny recipes/models/tiny-llama

clean:
	rm -rf $(VENV) runs .pytest_cache
