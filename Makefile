# make install   create .venv and install the project with its dev tools
# make test      run the test suite (offline; set MNIST_DATA_DIR for the real-MNIST checks)
# make train     train with the default config; ARGS="optimizer=adam model.activation=relu"
# make bench     time the lesson's loop, the project and the raw floor on real MNIST
# make bench-startup  how long the commands take to start, beside `import torch`
# make bench-serve  load on the serve command: 64 clients, 5,000 requests, with and without batching and beside 4 hostile clients
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install test train bench bench-startup bench-serve serve lint format tensorboard sweep-optimizers sweep-activations

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"

test:
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 --dist loadgroup

train:
	$(BIN)/python -m mnist_lightning.train $(ARGS)

bench:
	$(BIN)/python benchmarks/bench.py $(ARGS)

bench-startup:
	$(BIN)/python benchmarks/startup.py $(ARGS)

bench-serve:
	$(BIN)/python benchmarks/serve_bench.py $(ARGS)

serve:
	$(BIN)/python -m mnist_lightning.serve $(ARGS)

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

tensorboard:
	$(BIN)/tensorboard --logdir outputs

sweep-optimizers:
	$(BIN)/python -m mnist_lightning.train sweep=optimizers $(ARGS)

sweep-activations:
	$(BIN)/python -m mnist_lightning.train sweep=activations $(ARGS)
