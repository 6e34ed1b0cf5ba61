"""A real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium) opens the running dashboard (a real Streamlit server) against a real API server, checks
that the runs table, an equity comparison, a sweep, a stress heatmap and a paper session render,
and saves a screenshot of each under ``outputs/screenshots/``."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT
from tests.test_api import free_port, store  # noqa: F401 - the shared store of real runs
from tests.test_dashboard import api_url  # noqa: F401 - a real API server on that store

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
NO_BROWSER = "no chromium/chromedriver: apt-get install chromium chromium-driver (.ci/run does, as root)"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (CHROMIUM and DRIVER), reason=NO_BROWSER)]
SHOTS = ROOT / "outputs" / "screenshots"


@pytest.fixture
def dashboard(api_url):  # noqa: F811 - the fixture imported above
    port = free_port()
    env = {**os.environ, "RLTRADE_API_URL": api_url}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "src" / "dashboard" / "app.py"),
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/_stcore/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.3)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def shot(browser, url: str, name: str, wait_for: str, count: int = 1) -> Path:
    """Open ``url``, wait until ``count`` elements match the CSS ``wait_for``, save a screenshot."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 90).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, wait_for)) >= count)
    time.sleep(2)  # let plotly finish drawing
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def test_the_dashboard_renders_in_a_real_browser(dashboard, browser, api_url):  # noqa: F811
    runs = requests.get(f"{api_url}/runs", params={"limit": 50}).json()["runs"]
    compared = ",".join(r["run_id"] for r in runs if r["test_sharpe"] is not None and r["mode"] != "stress")
    shot(browser, f"{dashboard}/?page=Runs&compare={compared}", "runs-comparison", ".js-plotly-plot", count=2)
    assert "ppo-none" in browser.page_source  # the runs table
    crash = requests.get(f"{api_url}/runs", params={"scenario": "flash_crash"}).json()["runs"][0]["run_id"]
    shot(browser, f"{dashboard}/?page=Run&run={crash}", "run-under-flash-crash", ".js-plotly-plot", count=4)
    stressed = requests.get(f"{api_url}/runs", params={"mode": "stress"}).json()["runs"][0]["run_id"]
    shot(browser, f"{dashboard}/?page=Stress&run={stressed}", "stress-heatmap", ".js-plotly-plot")
    shot(browser, f"{dashboard}/?page=Sweeps", "sweep", "[data-testid='stDataFrame']")
    shot(browser, f"{dashboard}/?page=Paper", "paper-session", ".js-plotly-plot")
