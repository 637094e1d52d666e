# The two commands: `make demo` and `make test`. Both set everything up on first use.
# PYTHON=/path/to/python3.12 overrides the interpreter search (Python >= 3.12 is required).

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin

ifndef PYTHON
PYTHON := $(shell \
	for candidate in python3.13 python3.12 python3 python; do \
		if command -v $$candidate >/dev/null 2>&1 && \
			$$candidate -c 'import sys; sys.exit(not (3, 12) <= sys.version_info < (3, 14))' >/dev/null 2>&1; then \
			echo $$candidate; exit 0; fi; \
	done; \
	root=$$(pyenv root 2>/dev/null || echo "$$HOME/.pyenv"); \
	for candidate in $$root/versions/3.13*/bin/python3 $$root/versions/3.12*/bin/python3; do \
		if [ -x "$$candidate" ]; then echo $$candidate; exit 0; fi; \
	done)
endif

.PHONY: demo test lint format db db-stop browser pgbouncer bench clean

$(BIN)/.installed: pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
		echo "No Python 3.12 or 3.13 found. Install one, or run: make PYTHON=/path/to/python3.12 $(MAKECMDGOALS)"; \
		exit 1; fi
	@echo "Creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# Starts the embedded PostgreSQL unless DATABASE_URL points somewhere else.
db: $(BIN)/.installed
	@if [ -z "$$DATABASE_URL" ]; then \
		echo "Embedded PostgreSQL: $$($(BIN)/python -m testproject.embedded_db)"; \
	else echo "Using DATABASE_URL"; fi

db-stop: $(BIN)/.installed
	$(BIN)/python -m testproject.embedded_db stop

demo: db
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py rundemo

# Tests that drive real Debian programs (the admin's browser tests Chromium, never a downloaded
# browser; the PgBouncer tests pgbouncer) get them installed here when missing and we may (root
# with apt); otherwise those tests are skipped and say why.
# $(1): the program, $(2): the tests, $(3): a shell test that is true when it is already there.
define debian_program
	@if ! command -v $(1) >/dev/null 2>&1 && ! { $(3); }; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "Installing Debian's $(1) for the $(2)"; \
			apt-get install -y -q $(1) >/dev/null 2>&1 || \
				{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(1) >/dev/null 2>&1; } || \
				echo "Could not install $(1): the $(2) will be skipped"; \
		else \
			echo "No $(1): the $(2) will be skipped (apt-get install $(1))"; \
		fi; \
	fi
endef

browser:  # CHROMIUM=/path/to/chromium uses another build
	$(call debian_program,chromium,browser tests,[ -n "$$CHROMIUM" ])

pgbouncer:
	$(call debian_program,pgbouncer,PgBouncer tests,[ -x /usr/sbin/pgbouncer ])

test: db browser pgbouncer
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: db
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py taskbench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
