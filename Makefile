# Quick start: `make demo` then `make test`. Everything runs from a local virtualenv.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DUCKDB_PATH ?= var/warehouse.duckdb
export STATE_DB_URL ?= sqlite:///var/state.db
export DAGSTER_HOME ?= $(CURDIR)/var/dagster_home
DEMO_PATIENTS ?= 5000

.PHONY: install demo test ui web lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@mkdir -p var $(DAGSTER_HOME)
	$(BIN)/audiences demo --patients $(DEMO_PATIENTS)

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/pytest -q -n 2

ui: $(STAMP)
	@$(BIN)/python -c "from clinic_audiences.runner import ensure_dagster_home; ensure_dagster_home()"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dagster dev -w workspace.yaml

web: $(STAMP)
	$(BIN)/audiences web --host 127.0.0.1 --port 8080

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py --patients 100000

clean:
	rm -rf var dbt_project/target dbt_project/logs
