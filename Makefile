# Two entry points for a new user: `make demo` and `make test`.
# Both create the virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install install-test bench clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## Run the demo: fresh SQLite database, simulated gateway, a seeded business, the report;
## then the dashboard on that data at http://127.0.0.1:8000/admin until Ctrl-C.
demo: $(VENV)/.installed
	$(BIN)/recobra demo

## Lint, type-check, check the architecture, then run every test. The suite runs on
## SQLite, and on PostgreSQL too when RECOBRA_TEST_DATABASE_URL is set.
test: $(VENV)/.installed-test lint chromium
	$(BIN)/pytest

## Browser tests drive Debian's Chromium, launched by path (no browser download).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "the browser tests need Chromium: sudo apt-get install chromium"; exit 1; \
	  fi; }

lint: $(VENV)/.installed-test
	$(BIN)/ruff check recobra tests benchmarks
	$(BIN)/ruff format --check recobra tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

## The year-long benchmark (100,000 subscribers, 12 months) on SQLite.
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/simulate_year.py

clean:
	rm -rf $(VENV) recobra-demo .pytest_cache .mypy_cache .ruff_cache
