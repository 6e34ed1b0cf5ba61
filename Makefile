# Two commands do everything on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test bench serve dashboard clean

setup: $(STAMP)

# Reinstall only when the pinned set or the project metadata changes (idempotent).
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

run: setup
	$(PY) -m src.run $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

bench: setup
	$(PY) -m src.bench $(ARGS)

# The HTTP API on 127.0.0.1:$${RLTRADE_API_PORT:-8000} (OpenAPI docs at /docs).
serve: setup
	$(PY) -m src.api

# The dashboard on 127.0.0.1:$${RLTRADE_DASHBOARD_PORT:-8501}, a client of the API ($$RLTRADE_API_URL).
dashboard: setup
	$(VENV)/bin/streamlit run src/dashboard/app.py --server.address 127.0.0.1 \
		--server.port $${RLTRADE_DASHBOARD_PORT:-8501} --server.headless true --browser.gatherUsageStats false

clean:
	rm -rf $(VENV) outputs/* multirun mlflow_runs
