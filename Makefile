# Two commands on a fresh machine: `make run` and `make test`. Each installs what it needs into
# the project's own virtualenv (.venv); nothing is installed by hand.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed

.DEFAULT_GOAL := help
.PHONY: help run worker test lint format migrate venv backup restore bench fuzz

help:
	@echo "make run      start the API (embedded PostgreSQL unless DATABASE_URL is set)"
	@echo "make test     lint, type-check and run every test against real PostgreSQL"
	@echo "make fuzz     deeper schemathesis pass over every operation (FUZZ_EXAMPLES=200)"
	@echo "make lint     ruff, mypy, hadolint and shellcheck only"
	@echo "make format   rewrite the code with ruff format"
	@echo "make migrate  apply the Alembic migrations to DATABASE_URL"
	@echo "make backup   verified, signed dump into backups/ (DATABASE_URL, else the embedded server)"
	@echo "make restore FILE=backups/crm_....sql.gz   restore a signed backup (asks first)"
	@echo "              IDENTITY=key.txt for an encrypted .age backup; ALLOW_UNSIGNED=1 (read docs first)"
	@echo "make worker   run background jobs and schedules only (needs DATABASE_URL)"
	@echo "make bench    benchmark the API against a bare reference, 10k and 1M investors"
	@echo "              (SIZE=small: 10k only, a few minutes; needs wrk)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@ $(RUNTIME_STAMP)

venv: $(DEV_STAMP)

run: $(RUNTIME_STAMP)
	$(PY) main.py

# The background worker alone (production runs it as its own service, the API with RUN_WORKER=false).
worker: $(RUNTIME_STAMP)
	$(PY) -m worker

migrate: $(RUNTIME_STAMP)
	$(VENV)/bin/alembic upgrade head

backup: $(RUNTIME_STAMP)
	scripts/backup.sh

restore: $(RUNTIME_STAMP)
	@test -n "$(FILE)" || { echo "usage: make restore FILE=backups/crm_YYYYmmdd_HHMMSS.sql.gz"; exit 2; }
	scripts/restore.sh $(if $(IDENTITY),--identity "$(IDENTITY)") $(if $(ALLOW_UNSIGNED),--allow-unsigned) "$(FILE)"

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	@if [ -f Dockerfile ]; then $(VENV)/bin/hadolint Dockerfile; fi
	$(VENV)/bin/shellcheck -x scripts/*.sh

format: $(DEV_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest

# Sizes to benchmark: empty = small then large; SIZE=small or SIZE=large for one.
SIZE ?=

bench: $(DEV_STAMP)
	$(PY) -m bench.run $(SIZE)
	$(PY) -m bench.jobs
	$(PY) -m bench.audit $(SIZE)
	$(PY) -m bench.exports
	$(PY) -m bench.imports
	$(PY) -m bench.notifications

# The same fuzz test `make test` runs, with many more generated cases per operation.
fuzz: $(DEV_STAMP)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-200} FUZZ_STATEFUL_EXAMPLES=$${FUZZ_STATEFUL_EXAMPLES:-30} \
		$(PY) -m pytest -q tests/test_fuzz.py
