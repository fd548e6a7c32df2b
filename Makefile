# make demo: save / crash / resume / load against S3 (a local moto server if no endpoint is set)
# make test: lint, type checks and the whole test suite (make test-fast: without the multi-process gloo tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.s3dcp-installed

.PHONY: all docs install demo demo-distributed demo-tiered test test-fast test-rgw test-floor test-newest matrix-leg lint format typecheck unit integration clean bench-prefix

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned. Where it comes from is pip's own configuration unless the
# environment says otherwise: on the public index torch==2.13.0 for Linux x86_64 is the
# CUDA build (several GB of nvidia packages); for the CPU build set
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   (torch and its dependencies from there)
# or TORCH_WHEEL=path/or/url/to/torch-2.13.0+cpu-....whl   (that file; its dependencies from pip's index)
# testkit/: the local S3 servers (s3dcp_testkit) the tests, benchmarks and examples import
TORCH_VERSION   ?= 2.13.0
TORCH_INDEX_URL ?=
TORCH_WHEEL     ?=
TORCH := $(if $(TORCH_WHEEL),$(TORCH_WHEEL),torch==$(TORCH_VERSION)) $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
PIP_QUIET := --quiet --disable-pip-version-check
$(STAMP): pyproject.toml testkit/pyproject.toml | $(BIN)/python
	@echo "== setting up $(VENV) (first run only, a few minutes): torch $(TORCH_VERSION) $(if $(TORCH_INDEX_URL),from $(TORCH_INDEX_URL),$(if $(TORCH_WHEEL),from $(TORCH_WHEEL),from pip's configured index))"
	$(BIN)/python -m pip install $(PIP_QUIET) $(TORCH)
	@echo "== installing s3dcp with its test extra, and testkit/ (the local S3 servers)"
	$(BIN)/python -m pip install $(PIP_QUIET) torch==$(TORCH_VERSION) -e '.[test]' -e testkit
	@echo "== $(VENV) is ready"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/dcp/demo.py

# 4 ranks train with FSDP2 and checkpoint asynchronously; 2 ranks resume (torchrun, CPU)
demo-distributed: $(STAMP)
	$(BIN)/python examples/dcp/distributed_demo.py

# tiered checkpoints: local copy every step, S3 every 3rd in the background, a damaged file, a lost node
demo-tiered: $(STAMP)
	$(BIN)/python examples/dcp/tiered_demo.py

# ruff (pinned in the test extra) over everything that is Python here
LINTED := s3dcp testkit tests benchmarks examples docs
lint: $(STAMP)
	$(BIN)/python -m ruff check $(LINTED)
	$(BIN)/python -m ruff format --check $(LINTED)

format: $(STAMP)
	$(BIN)/python -m ruff check --fix $(LINTED)
	$(BIN)/python -m ruff format $(LINTED)

# mypy (strict) over s3dcp, testkit/s3dcp_testkit and benchmarks (pyproject.toml)
typecheck: $(STAMP)
	$(BIN)/python -m mypy

# the settings reference in docs/configuration.md, from the docstrings (tests/unit/test_docs.py checks it)
docs: $(STAMP)
	$(BIN)/python docs/reference.py

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

# two workers, each taking whole test files (module fixtures stay on one worker): most tests
# wait on servers and child processes, so two at once take about 5.5 minutes where one takes 8.5
XDIST := -n 2 --dist loadfile
test: lint typecheck
	$(BIN)/python -m pytest $(XDIST)

# the same without the tests that start gloo process groups (marked `ranks`): a few minutes less
test-fast: lint typecheck
	$(BIN)/python -m pytest $(XDIST) -m "not ranks"

# The integration suite against a throw-away single-node Ceph RGW over HTTP, then
# HTTPS. Installs Ceph with apt-get if missing (needs root); stops what it started.
RGW_DIR ?= /tmp/s3dcp-rgw
test-rgw: $(STAMP)
	$(BIN)/python -m s3dcp_testkit.ceph_rgw start --dir $(RGW_DIR) || { $(BIN)/python -m s3dcp_testkit.ceph_rgw stop --dir $(RGW_DIR); exit 1; }
	status=0; \
	for server in rgw-http rgw-https; do \
		echo "== integration tests against $$server"; \
		S3DCP_RGW_DIR=$(RGW_DIR) S3DCP_TEST_SERVER=$$server $(BIN)/python -m pytest tests/integration || status=1; \
	done; \
	$(BIN)/python -m s3dcp_testkit.ceph_rgw stop --dir $(RGW_DIR); \
	exit $$status

# The version matrix: the whole suite again in a venv of its own, once on the lowest
# release of every dependency pyproject.toml declares (pinned in .ci/constraints-floor.txt)
# and once on the newest the registry serves. torch stays 2.13.0 in both, from where TORCH_INDEX_URL / TORCH_WHEEL say (see above).
MATRIX_VENV = .venv-$(LEG)
MATRIX_PIP  = $(MATRIX_VENV)/bin/python -m pip install $(PIP_QUIET)
test-floor:
	$(MAKE) matrix-leg LEG=floor PIN='-c .ci/constraints-floor.txt'
test-newest:
	$(MAKE) matrix-leg LEG=newest PIN='--upgrade --upgrade-strategy eager'
matrix-leg:
	rm -rf $(MATRIX_VENV)
	$(PYTHON) -m venv $(MATRIX_VENV)
	$(MATRIX_PIP) $(TORCH)
	$(MATRIX_PIP) $(PIN) torch==$(TORCH_VERSION) -e '.[test]' -e testkit
	$(MATRIX_VENV)/bin/python -m pip list --disable-pip-version-check 2>/dev/null | grep -iE '^(torch|botocore|boto3|urllib3|numpy|tenacity|xxhash|isal|zstandard|moto) '
	$(MATRIX_VENV)/bin/python -m pytest -p no:cacheprovider

# prefix strategies against the proxy's per-partition throttling model (test venv)
bench-prefix: $(STAMP)
	$(BIN)/python benchmarks/prefix_throttle.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-floor .venv-newest build *.egg-info testkit/build testkit/*.egg-info .pytest_cache .mypy_cache

# make bench: side-by-side benchmark (s3dcp, s3torchconnector, fsspec/s3fs, boto3, local disk)
# in its own venv, so s3fs's botocore pin never touches .venv. Options: make bench BENCH_ARGS='--size-mib 64 --runs 1'
BENCH_VENV  ?= .venv-bench
BENCH_BIN   := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.s3dcp-bench-installed
BENCH_ARGS  ?= --server both --scheme both

.PHONY: bench bench-install bench-clean

$(BENCH_BIN)/python:
	$(PYTHON) -m venv $(BENCH_VENV)

# torch first and pinned (from where TORCH_INDEX_URL / TORCH_WHEEL say, as above), then pinned again on the
# same command line as the extra so nothing in it can upgrade torch. s3fs is
# named there too so pip settles aiobotocore's botocore pin before it picks a
# boto3 (left to the extra alone, pip backtracks through s3fs releases for many minutes)
$(BENCH_STAMP): pyproject.toml testkit/pyproject.toml | $(BENCH_BIN)/python
	$(BENCH_BIN)/python -m pip install $(PIP_QUIET) $(TORCH)
	$(BENCH_BIN)/python -m pip install $(PIP_QUIET) torch==$(TORCH_VERSION) 's3fs>=2024.6' -e '.[bench]' -e testkit
	touch $@

bench-install: $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_BIN)/python benchmarks/compare.py $(BENCH_ARGS)

bench-clean:
	rm -rf $(BENCH_VENV)
