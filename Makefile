# make demo: save / crash / resume / load against S3 (a local moto server if no endpoint is set)
# make test: type checks and the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.s3dcp-installed

.PHONY: all install demo test typecheck unit integration clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: a CPU wheel; any other torch spec downloads gigabytes
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/dcp/demo.py

typecheck: $(STAMP)
	$(BIN)/python -m mypy

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

test: typecheck
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
