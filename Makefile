# The two commands (see README.md):
#   make run    set up, then run the main job
#   make test   set up, then run the test suite (what .ci/run calls)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: setup run test test-slow bench-backward bench-model bench-decode default-model clean

# llama-cpp-python as pyproject.toml pins it, built from source for this CPU
# (-march=native) but without ggml's AMX kernels: where the CPU has AMX, this release's
# kernels load a tile configuration the compiler left partly uninitialised and fault in the
# first decode (SIGSEGV at ldtilecfg on a Sapphire Rapids VM whose AMX works otherwise;
# ggml-org/llama.cpp#20824, #26954). Without a wheel cache, so that a wheel built earlier
# with them is not reused.
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS ?= $(if $(filter x86_64 amd64,$(shell uname -m)),-DCMAKE_C_FLAGS="$(NO_AMX)" -DCMAKE_CXX_FLAGS="$(NO_AMX)")

# The CPU build of torch goes in first: with no torch installed, pip would resolve
# `torch` to a multi-GB CUDA build. llama-cpp-python builds from source (~5 min on
# 2 cores).
setup: $(VENV)/.installed system-packages
$(VENV)/.installed: pyproject.toml
	@echo "== creating $(VENV) and installing torch (CPU build) =="
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	@echo "== building llama-cpp-python from source: about 5 minutes on 2 cores =="
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(PY) -m pip install --quiet --no-cache-dir '$(LLAMA_CPP_PYTHON)'
	@echo "== installing mtp-assistant and its other dependencies =="
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Debian packages the tests use: bubblewrap (the HumanEval sandbox: no network, no writes
# outside its directory) and neovim (a real editor drives the language server). Installed
# when missing and we are root; otherwise named, and the tests that need them say why they skip.
SYSTEM_PACKAGES = bwrap:bubblewrap nvim:neovim
.PHONY: system-packages
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "== installing system packages:$$missing =="; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
				|| echo "note: could not install$$missing; the tests that need them skip"; \
		else \
			echo "note: missing system packages:$$missing (sudo apt-get install$$missing); the tests that need them skip"; \
		fi; \
	fi

# Main job: the terminal UI on the shipped default model (models/default).
run: setup
	$(VENV)/bin/mtp-assistant tui

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

bench-backward: setup
	$(PY) -m assistant.training.bench_backward

# A 4-head byte model trained on this Python's standard library (about 35 minutes on
# 2 CPU cores): the model BENCHMARKS.md's decoding figures were measured with.
STDLIB = $(shell $(PY) -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])" 2>/dev/null)
BENCH_MODEL ?= runs/stdlib-byte4
bench-model: setup
	$(VENV)/bin/mtp-assistant train $(STDLIB) --out $(BENCH_MODEL) --preset small --dim 192 --n-heads 6 \
		--n-layers 14 --n-future 4 --seq-len 256 --batch-size 16 --steps 1000 --lr 2e-3 --warmup 60 \
		--eval-every 200 --checkpoint-every 100 --seed 0

bench-decode: setup
	$(VENV)/bin/mtp-assistant bench --model $(BENCH_MODEL)/model --max-new 128 --out $(BENCH_MODEL)/bench.json

# The shipped default model (models/default), rebuilt from nothing: gather the pinned
# corpus, train in stages (BPE tokenizer included; see STAGES in the recipe: the shipped stage
# needs an NVIDIA GPU and torch's CUDA build, see the recipe's docstring for training on another
# machine), copy the last stage's model into models/default, export its llama.cpp (GGUF q8_0)
# files and measure its card (held-out heads, next-line exact match, HumanEval, speed in both engines).
DEFAULT_DATA ?= runs/default-data
DEFAULT_RUNS ?= runs/default-stages
default-model: setup
	$(PY) -m assistant.training.recipe gather $(DEFAULT_DATA)
	$(PY) -m assistant.training.recipe train $(DEFAULT_DATA) $(DEFAULT_RUNS)
	OMP_NUM_THREADS=1 $(PY) -m assistant.training.recipe ship $(DEFAULT_RUNS) $(DEFAULT_DATA)

clean:
	rm -rf $(VENV) runs
