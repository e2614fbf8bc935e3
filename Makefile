# Every target sets itself up: the first use creates .venv and installs the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: smoke test test-fast lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
# facenet-pytorch ships the MTCNN weights ID-Booth's loss uses (faces/mtcnn.py); no deps: it pins old torch/torchvision
	$(BIN)/pip install --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

smoke: $(STAMP)
	$(BIN)/facefoundry run configs/smoke.yaml --out runs/smoke

# The whole suite, one test file per pytest-xdist worker (a file's tests share its module fixtures and embedded Ray).
# Three workers keep both cores busy through the Ray tests' start-up waits; four were no faster (docs/architecture.md).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder tests

# The inner loop (under 2 minutes on 2 cores): no Ray, no processes, no training, no slow sampler.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not ray and not spawn and not train and not slow" tests

# lint-imports reads the package as installed (the layers span src/, generators/, filters/, faces/, pipelines/),
# so it checks a plain (non-editable) copy of it under build/.
lint: $(STAMP)
	$(BIN)/ruff check .
	rm -rf build/lint-imports
	$(BIN)/pip install -q --no-deps --no-build-isolation --target build/lint-imports .
	PYTHONPATH=build/lint-imports $(BIN)/lint-imports

clean:
	rm -rf runs
