# PayText: `make run` runs the service, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: run test chromium lint format bench clean

$(VENV)/.runtime: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "PayText needs Python 3.11 or newer (set PYTHON=python3.12, say)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

## run: web + worker + scheduler on http://localhost:5000 (embedded Redis when REDIS_URL is unset)
run: $(VENV)/.runtime
	$(BIN)/python -m scripts.run

## test: the whole suite; also on PostgreSQL when TEST_DATABASE_URL is set
test: $(VENV)/.dev chromium
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The browser test drives Debian's chromium (never `playwright install`); add it when missing.
chromium:
	@[ -x /usr/bin/chromium ] || ! command -v apt-get >/dev/null || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev
	$(BIN)/ruff format .

bench: $(VENV)/.dev
	$(BIN)/python -m bench.import_cases

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
