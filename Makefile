# Two commands do everything on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test bench serve dashboard mlflow-server lint typecheck security hooks check clean

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

# Code health (each also runs in .ci/run before the tests, and as a pre-commit hook).
lint: setup
	$(VENV)/bin/ruff check src plugins tests
	$(VENV)/bin/ruff format --check src plugins tests

typecheck: setup
	$(VENV)/bin/mypy

# bandit over the code; pip-audit over the locked requirements when its vulnerability service
# (PyPI's JSON API) is reachable, else skipped with the reason printed.
security: setup
	$(VENV)/bin/bandit -q -c pyproject.toml -r src plugins
	@if $(PY) -c "import urllib.request; urllib.request.urlopen('https://pypi.org/pypi/pip/json', timeout=5)" 2>/dev/null; then \
		$(VENV)/bin/pip-audit --disable-pip -r requirements.lock --no-deps; \
	else echo "pip-audit skipped: PyPI's vulnerability service (https://pypi.org/pypi) is not reachable from here"; fi

hooks: setup
	$(VENV)/bin/pre-commit install

check: lint typecheck security

# An MLflow tracking server on 127.0.0.1:$${MLFLOW_PORT:-5000} (sqlite backend, served artifacts) for
# multi-process and multi-node runs: export MLFLOW_TRACKING_URI=http://127.0.0.1:$${MLFLOW_PORT:-5000}
mlflow-server: setup
	$(VENV)/bin/mlflow server --backend-store-uri sqlite:///mlflow_runs/server.db \
		--artifacts-destination mlflow_runs/served-artifacts --serve-artifacts \
		--host 127.0.0.1 --port $${MLFLOW_PORT:-5000}

clean:
	rm -rf $(VENV) outputs/* multirun mlflow_runs
