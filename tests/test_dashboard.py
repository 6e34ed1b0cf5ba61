"""The dashboard: every page rendered by Streamlit's AppTest against a real API server (uvicorn on
127.0.0.1) over an MLflow store with real runs, a sweep and a stress run; widgets drive the API."""

import threading
import time

import pytest
import requests
import uvicorn
from streamlit.testing.v1 import AppTest

from src.api.app import create_app
from tests.conftest import ROOT
from tests.test_api import free_port, store  # noqa: F401 - the shared store of real runs

APP = str(ROOT / "src" / "dashboard" / "app.py")


@pytest.fixture
def api_url(store, monkeypatch, tmp_path):  # noqa: F811 - the fixture imported above
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store['dir']}/mlflow.db")
    monkeypatch.setenv("RLTRADE_PAPER_DIR", str(store["dir"] / "paper"))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(jobs_dir=tmp_path / "jobs"), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    monkeypatch.setenv("RLTRADE_API_URL", url)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def page(name: str) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=60).run()
    app.sidebar.radio(key="page").set_value(name).run()
    assert not app.exception, app.exception
    return app


@pytest.mark.parametrize("name", ["Runs", "Run", "Sweeps", "Stress", "Launch", "Paper", "System"])
def test_every_page_renders(api_url, name):
    app = page(name)
    assert not app.error, [e.value for e in app.error]


def test_runs_page_compares_selected_runs(api_url):
    app = page("Runs")
    runs = requests.get(f"{api_url}/runs", params={"agent": "buy_and_hold"}).json()["runs"]
    app.multiselect(key="compare").set_value([r["run_id"] for r in runs]).run()
    assert not app.exception
    charts = app.get("plotly_chart")
    assert len(charts) == 2  # equity and drawdown overlays
    assert len(app.dataframe) == 2  # the runs table and the parameters side by side


def test_run_sweep_stress_and_paper_pages_draw_their_charts(api_url):
    run = page("Run")  # the latest run with a test backtest: a paper session has none -> PPO or hold
    assert len(run.get("plotly_chart")) >= 4  # equity + fills, drawdown, position, rolling Sharpe
    sweeps = page("Sweeps")
    assert len(sweeps.dataframe) == 1 and "python -m src.run" in sweeps.code[0].value  # trials, best
    assert len(page("Stress").get("plotly_chart")) == 1  # the heatmap
    assert len(page("Paper").get("plotly_chart")) == 1  # the demo session's equity


def test_launch_page_starts_a_job_through_the_api(api_url):
    app = page("Launch")
    options = requests.get(f"{api_url}/configs").json()["groups"]["agent"]
    assert app.selectbox(key="launch_agent").options == ["(default)"] + options  # from /configs
    app.selectbox(key="launch_agent").set_value("buy_and_hold")
    app.text_input(key="launch_overrides").set_value("data.n_bars=2500 backtest.plots=false")
    app.button(key="launch_start").click().run()
    assert not app.exception
    (job,) = requests.get(f"{api_url}/jobs").json()
    assert "agent=buy_and_hold" in job["overrides"] and "data.n_bars=2500" in job["overrides"]
    requests.delete(f"{api_url}/jobs/{job['id']}")
