# dynams-service: `make demo` and `make test` set everything up on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Directory of the four Fashion-MNIST IDX files (raw or .gz); Debian's package puts them here.
DATA_DIR ?= /usr/share/datasets/fashion-mnist
SHARDS ?= data/fashion-mnist
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist workers for make test (0: one process); files stay whole on one worker, and
# go out costliest first (tests/file_costs.py) so the workers end together.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
# The tests and the demo start many Python processes (scorer actors, ranks, servers): let
# them cache the bytecode they compile instead of each compiling torch and this checkout
# again (PYTHONDONTWRITEBYTECODE, where set, is cleared for these runs only).
RUN_ENV = PYTHONDONTWRITEBYTECODE=

.PHONY: test test-fast demo lint data venv clean

venv: $(STAMP)

# torch and torchvision are pinned first, as a pair: torchvision's compiled ops load only
# beside the torch they were built for (this build runs on CPU-only machines too).
# Installed without bytecode (--no-compile, about 50 s less on 2 cores): Python compiles a
# module on its first import and caches it, so only what runs is ever compiled.
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile $(TORCH_PAIR)
	$(PY) -m pip install --quiet --no-compile -e '.[dev]'
	touch $@

# Fashion-MNIST: Debian's dataset-fashion-mnist when missing and apt is usable.
data:
	@if ls $(DATA_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST not found in $(DATA_DIR) and apt is not available."; \
		echo "Download the four IDX files and run: make $(MAKECMDGOALS) DATA_DIR=/path/to/idx"; \
		echo "(the CLI takes the same directory: dynams dataset convert --data-dir DIR --out OUT)"; \
		exit 1; \
	fi

$(SHARDS)/train/dynams-dataset.json: $(STAMP) | data
	$(VENV)/bin/dynams dataset convert --data-dir $(DATA_DIR) --out $(SHARDS)

test: $(STAMP) data
	$(VENV)/bin/ruff check .
	$(RUN_ENV) DYNAMS_FASHION_MNIST_DIR=$(DATA_DIR) $(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# The tests that need neither Ray nor torchrun: the core, the client, the coordinator
# with in-process scorers, the CLI, the docs (about 1.5 minutes on 2 cores).
test-fast: $(STAMP) data
	$(VENV)/bin/ruff check .
	$(RUN_ENV) DYNAMS_FASHION_MNIST_DIR=$(DATA_DIR) $(PY) -m pytest -m "not ray and not slow and not soak" $(XDIST) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# DEMO_ARGS: e.g. "--epochs 10 --ratio 0.2 -- --staleness sync".
DEMO_ARGS ?=
demo: $(STAMP) $(SHARDS)/train/dynams-dataset.json
	$(RUN_ENV) $(PY) examples/demo.py --shards $(SHARDS) $(DEMO_ARGS)

clean:
	rm -rf $(VENV) $(SHARDS)
