# Two entry points: `make demo` and `make test`. Both build .venv on first use.
PY ?= python3
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-beauty clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# CPU torch first so pip never resolves a multi-GB CUDA build for torch>=2.4. Elsewhere, point
	# TORCH_INDEX at a CPU index, e.g. make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,faiss,tune,text]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/shopformer demo --out runs/demo

test: $(STAMP)
	bash scripts/ensure_redis.sh
	bash scripts/ensure_chromium.sh
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

bench-beauty: $(STAMP)
	$(BIN)/python bench/beauty.py

clean:
	rm -rf $(VENV) runs
