# The two commands a newcomer runs (see README):
#   make serve   install, import the model into the BentoML store, serve on https?://127.0.0.1:3000
#   make test    install everything the tests need, start Redis if it is down, run ruff and pytest
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
FIREBASE_DIR := tests/firebase

.PHONY: install install-test node-deps redis serve test test-browser chromium lint bench bench-model bench-keras gpu-check test-container test-batch alerts-test loadtest soak

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first and exactly pinned: anything looser resolves to a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml requirements.txt | $(VENV)/bin/python
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PIP) install --quiet -e '.[test]'
	# pyActigraphy is only the reference implementation for acceptance tests; its full dependency set
	# does not install on Python 3.11 (scikit-learn 1.0.1), so it comes without deps (pinned in [test]).
	$(PIP) install --quiet --no-deps pyActigraphy==1.2.2
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# firebase-tools (Auth Emulator) pinned by the committed lock file; optional deps skipped (4 min -> 25 s).
$(FIREBASE_DIR)/node_modules/.installed: $(FIREBASE_DIR)/package-lock.json
	cd $(FIREBASE_DIR) && npm ci --omit=optional --no-audit --no-fund --loglevel=error
	touch $@

node-deps: $(FIREBASE_DIR)/node_modules/.installed

redis:
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || \
		redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no

serve: install
	$(PY) scripts/quickstart.py

# promtool ships in Debian's `prometheus` package; installed once, then reused.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
alerts-test:
	@command -v promtool >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }
	promtool check rules deploy/monitoring/pat-alerts.yaml
	promtool test rules deploy/monitoring/pat-alerts.test.yaml

lint: install-test alerts-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) scripts/k8s_validate.py

test: install-test node-deps redis lint
	$(VENV)/bin/pytest -q

# Builds the Bento into an image with podman and runs it (scripts/container_check.sh; ~10 min here).
test-container: install
	PY=$(PY) bash scripts/container_check.sh

# Ray Data for the cohort back-fill: an extra of its own (ray + pyarrow, ~250 MB), not in `make test`.
$(VENV)/.installed-batch: pyproject.toml $(VENV)/.installed-test
	$(PIP) install --quiet -e '.[test,batch]'
	touch $@

test-batch: $(VENV)/.installed-batch redis
	$(VENV)/bin/pytest -q -m ray

# Debian's Chromium and its chromedriver for the docs-page test; installed only when missing.
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver)

test-browser: install-test chromium
	$(VENV)/bin/pytest -q -m browser tests/test_docs_browser.py

bench: install
	$(PY) scripts/bench_encode.py

# every inference backend here: weeks/s, latency, RSS, fraction of matmul peak (docs/performance.md)
bench-model: install
	$(PY) scripts/bench_model.py --json bench_model.json

# The original Keras PAT as the baseline: the `bench` extra (tensorflow + tf-keras, never a runtime
# dependency), its parity test on the reference fixtures, then every backend's ratio to it.
$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-test
	$(PIP) install --quiet -e '.[test,bench]'
	touch $@

bench-keras: $(VENV)/.installed-bench
	$(VENV)/bin/pytest -q tests/test_keras_reference.py
	$(PY) scripts/bench_model.py --keras --batches 1 8 --json bench_model.json

# parity + throughput of every GPU backend (needs a CUDA torch and onnxruntime-gpu)
gpu-check:
	scripts/gpu_check.sh $(PY)

# A longer bounded locust run against a served Bento (Auth Emulator tokens, real Redis); report in
# build/loadtest/report.md. Bounds: LOADTEST_SECONDS, LOADTEST_USERS, LOADTEST_RATE (req/s per user);
# LOADTEST_MODEL_H5=<Keras weights> serves that model (e.g. PAT-M) instead of the demo PAT-S.
loadtest: install-test node-deps redis
	LOADTEST_OUT=build/loadtest LOADTEST_SECONDS=$${LOADTEST_SECONDS:-120} \
		LOADTEST_USERS=$${LOADTEST_USERS:-8} LOADTEST_RATE=$${LOADTEST_RATE:-0.5} \
		$(VENV)/bin/pytest -q tests/test_load_short.py

# 20 minutes at a steady rate below capacity; report in build/soak/report.md (see docs/performance.md).
soak: install-test node-deps redis
	LOADTEST_SOAK=1 LOADTEST_OUT=build/soak LOADTEST_SECONDS=$${SOAK_SECONDS:-1200} \
		LOADTEST_USERS=$${SOAK_USERS:-4} LOADTEST_RATE=$${SOAK_RATE:-0.5} \
		$(VENV)/bin/pytest -q tests/test_load_short.py
