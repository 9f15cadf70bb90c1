# Build helpers. The README's two commands are `make demo` and `make test`; both set up
# everything they need (virtual environment, package, Delta jars) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_LANDING ?= data/landing

.PHONY: install demo demo-live test test-fast lint bench bench-stream package clean

# System packages the tests need: headless Chromium (Debian's package) for the browser test.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): setup.cfg pyproject.toml
	@command -v chromium > /dev/null || $(SUDO) sh -c 'apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/lakehouse jars > /dev/null
	touch $(STAMP)

install: $(STAMP)

demo: install
	@test -f $(DEMO_LANDING)/manifest.json || $(BIN)/lakehouse demo generate --out $(DEMO_LANDING)
	$(BIN)/lakehouse run --sync file
	$(BIN)/lakehouse tables
	$(BIN)/lakehouse preview viewed_offer --segment window_shoppers --limit 6 --out data/preview

# The collector and the stream on the demo lakehouse: two events sent over HTTP change two segments.
demo-live: install
	@test -d data/lakehouse/gold || $(MAKE) demo
	$(BIN)/lakehouse demo live

# Not a test: prints timings (EVENTS=5000000 make bench for the memory check).
EVENTS ?= 1000000
bench: install
	$(BIN)/lakehouse bench --events $(EVENTS)

# Not a test: latency from a POST to the collector to a Klaviyo list change, through lakehouse stream.
bench-stream: install
	$(BIN)/python -m tests.benchmarks.stream_latency

package: install
	$(BIN)/lakehouse package --out dist/spark

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest --durations=15

# The inner loop: transforms, job and collector tests, no subprocess, cluster, notebook or slow job test.
test-fast: install
	$(BIN)/pytest -m "not e2e and not cluster and not notebook and not slow" tests/transforms tests/jobs tests/collector

clean:
	rm -rf data dist spark-warehouse metastore_db derby.log .pytest_cache .ruff_cache
