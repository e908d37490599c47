# phonekey — the two commands of the quick start: `make demo` and `make test`.
# Each creates .venv if needed, installs the project into it, and runs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit slow bench clean redis-server promtool

# Tests start their own redis-server processes; install the binary when it is missing and we can.
redis-server:
	@command -v redis-server >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing redis-server (apt-get)"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
		else \
			echo "redis-server is missing: install it (Debian: sudo apt-get install redis-server)"; \
			exit 1; \
		fi; }

# promtool checks the Prometheus rules and config (tests/deploy/test_manifests.py): the binary
# alone, taken from Debian's prometheus package without installing it (no service is started).
promtool: $(STAMP)
	@test -x $(BIN)/promtool || { \
		if command -v promtool >/dev/null; then ln -sf "$$(command -v promtool)" $(BIN)/promtool; \
		elif command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then \
			d=$$(mktemp -d); \
			( cd $$d && { apt-get download -qq prometheus >/dev/null 2>&1 || \
				{ [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download -qq prometheus >/dev/null; }; } ) && \
			dpkg-deb -x $$d/prometheus_*.deb $$d/x && cp $$d/x/usr/bin/promtool $(BIN)/promtool && \
			echo "promtool taken from Debian's prometheus package into $(BIN)"; \
			rm -rf $$d; \
		fi; \
		test -x $(BIN)/promtool || echo "promtool unavailable (Debian: apt-get install prometheus)"; }

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "phonekey needs Python >= 3.11 (found: $$($(PYTHON) --version))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ble,lab]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/phonekey demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) redis-server promtool
	$(BIN)/python -m pytest -m 'not slow'

# the long drills and scale variants left out of `make test`
slow: $(STAMP) redis-server promtool
	$(BIN)/python -m pytest -m slow

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/phonekey bench verify --json

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build *.egg-info
