"""The HTTP API: every endpoint and error through FastAPI's TestClient on an MLflow store made by
the test with real runs, and a real uvicorn server on 127.0.0.1 that runs a job to completion."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import requests
from fastapi.testclient import TestClient

from src.api.app import create_app
from src.run import run
from tests.conftest import ROOT, compose_config, mlflow_store

TINY_PPO = [
    "data.n_bars=2500",
    "agent.total_frames=1024",
    "agent.frames_per_batch=512",
    "agent.minibatch_size=256",
    "agent.progress=false",
    "env.num_envs=8",
    "env.episode_length=128",
    "backtest.plots=false",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real MLflow store: a PPO run, a buy-and-hold run under a scenario, and a sweep parent
    with one trial nested under it; plus a paper-session journal."""
    tmp = tmp_path_factory.mktemp("api")
    inside = ROOT / "outputs" / f"pytest-api-{os.getpid()}"  # /act reads checkpoints in the project
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_store(tmp)
    try:
        os.chdir(ROOT)
        run(compose_config(TINY_PPO), inside / "ppo")
        run(
            compose_config(["agent=buy_and_hold", "scenario=flash_crash", "data.n_bars=2500", "backtest.plots=false"]),
            tmp / "hold",
        )
        run(
            compose_config(
                [
                    "agent=buy_and_hold",
                    "mode=stress",
                    "data.n_bars=3000",
                    "backtest.plots=false",
                    "run_name=stress-hold",
                ]
            ),
            tmp / "stress",
        )
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        with mlflow.start_run(run_name="sweep-test") as parent:
            mlflow.log_params({"sweep.metric": "val_sharpe"})
        run(
            compose_config(
                [
                    "agent=random",
                    "data.n_bars=2500",
                    "backtest.plots=false",
                    f"++mlflow.parent_run_id={parent.info.run_id}",
                    "evaluate_test=false",
                ]
            ),
            tmp / "trial",
        )
        run(
            compose_config(
                [
                    "mode=paper",
                    "agent=sma_cross",
                    "agent.fast=3",
                    "agent.slow=8",
                    "data.n_bars=3000",
                    "paper.history_bars=700",
                    "feed.max_bars=120",
                    "paper.panel=false",
                    "paper.session=demo",
                    f"paper.journal_dir={tmp / 'paper'}",
                ]
            ),
            tmp / "paper-run",
        )
        yield {"dir": tmp, "parent": parent.info.run_id, "inside": inside}
    finally:
        shutil.rmtree(inside, ignore_errors=True)
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture
def api(store, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store['dir']}/mlflow.db")
    monkeypatch.setenv("RLTRADE_PAPER_DIR", str(store["dir"] / "paper"))
    with TestClient(create_app(jobs_dir=tmp_path / "jobs")) as client:
        yield client


def test_health_runs_filters_and_paging(api):
    assert api.get("/health").json()["status"] == "ok"
    page = api.get("/runs").json()
    assert page["total"] == 6
    names = {r["name"] for r in page["runs"]}
    assert {"ppo-none", "buy_and_hold-flash_crash", "sweep-test"} <= names
    hold = api.get("/runs", params={"agent": "buy_and_hold"}).json()["runs"]
    assert sorted(r["scenario"] for r in hold) == ["flash_crash", "none"]
    assert api.get("/runs", params={"scenario": "flash_crash"}).json()["total"] == 1
    second = api.get("/runs", params={"limit": 1, "offset": 1}).json()
    assert len(second["runs"]) == 1 and second["total"] == 6
    assert api.get("/runs", params={"mode": "stress"}).json()["runs"][0]["name"] == "stress-hold"
    assert api.get("/runs", params={"agent": "x' or 1=1"}).status_code == 400


def test_one_run_its_equity_trades_and_unknown_ids(api):
    ppo = api.get("/runs", params={"agent": "ppo"}).json()["runs"][0]
    detail = api.get(f"/runs/{ppo['run_id']}").json()
    assert detail["params"]["agent.name"] == "ppo" and "test/sharpe" in detail["metrics"]
    assert {"policy.pt", "equity.csv", "trades.csv"} <= set(detail["artifacts"])
    curve = api.get(f"/runs/{ppo['run_id']}/equity").json()
    assert len(curve) > 100 and curve[0]["value"] == 10_000.0 and curve[0]["baseline"] == 10_000.0
    assert curve[-1]["baseline"] != curve[-1]["value"]  # buy-and-hold on the same bars
    policy = api.get(f"/runs/{ppo['run_id']}/artifacts/policy.pt")
    assert policy.status_code == 200 and len(policy.content) > 1000
    assert api.get(f"/runs/{ppo['run_id']}/artifacts/..%2F..%2F..%2Fmlflow.db").status_code in (400, 404)
    assert api.get(f"/runs/{ppo['run_id']}/artifacts/nope.csv").status_code == 404
    trades = api.get(f"/runs/{ppo['run_id']}/trades").json()
    assert trades and {"timestamp", "side", "units", "price", "fee", "reason"} <= set(trades[0])
    assert api.get("/runs/nosuchrun").status_code == 404
    assert api.get("/runs/nosuchrun/equity").status_code == 404


def test_stress_table_and_training_history(api):
    (stressed,) = api.get("/runs", params={"mode": "stress"}).json()["runs"]
    table = api.get(f"/runs/{stressed['run_id']}/stress").json()
    assert list(table)[0] == "none" and "buy_and_hold" in table["flash_crash"]
    ppo = api.get("/runs", params={"agent": "ppo"}).json()["runs"][0]
    assert api.get(f"/runs/{ppo['run_id']}/stress").status_code == 404
    curve = api.get(f"/runs/{ppo['run_id']}/history/train/reward_per_step").json()
    assert [int(p["timestamp"]) for p in curve] == [512, 1024]


def test_sweep_configs_and_paper_sessions(api, store):
    sweep = api.get(f"/sweeps/{store['parent']}").json()
    assert sweep["metric"] == "val_sharpe" and len(sweep["trials"]) == 1
    assert sweep["trials"][0]["params"]["agent.name"] == "random"
    groups = api.get("/configs").json()["groups"]
    assert "quick" in groups["experiment"] and "ppo_conv" in groups["agent"]
    assert {"replay", "ccxt"} <= set(groups["feed"]) and "flash_crash" in groups["scenario"]
    (session,) = api.get("/paper/sessions").json()
    summary = json.loads((store["dir"] / "paper-run" / "paper_summary.json").read_text())
    assert session["session"] == "demo" and session["bars"] == 120 and session["fills"] == summary["trades"]
    assert session["equity"] == pytest.approx(summary["equity"])
    events = api.get("/paper/demo/events", params={"follow": "false"}).text
    assert events.count("event: fill") == summary["trades"] and events.count("event: equity") == 119
    assert '"latency_ms": ' in events and '"latency_ms": null' not in events
    assert api.get("/paper/nosuch/events").status_code == 404
    assert api.get("/paper/..%2F..%2Fetc%2Fpasswd/events").status_code == 404


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"groups": {"agent": "sac"}}, 422, "Available options in 'agent'"),
        ({"overrides": ["agent.lr=="]}, 422, "agent.lr"),
        ({"overrides": ["backtest.sizing.target_vol=-1"]}, 422, "out of range"),
        ({"overrides": ["agent.checkpoint=../../../etc/passwd"]}, 400, "outside the project"),
        ({"overrides": ["hydra.run.dir=/tmp/x"]}, 422, "hydra.* settings are the server's"),
        ({"kind": "nope"}, 422, "kind"),
    ],
)
def test_a_bad_job_is_refused_before_anything_starts(api, body, status, message):
    answer = api.post("/jobs", json=body)
    assert answer.status_code == status and message in str(answer.json()["detail"])
    assert api.get("/jobs").json() == []


def test_mutating_endpoints_need_the_token_when_it_is_set(api, monkeypatch):
    monkeypatch.setenv("RLTRADE_API_TOKEN", "s3cret-token")
    assert api.post("/jobs", json={"groups": {"agent": "sac"}}).status_code == 401
    assert api.delete("/jobs/x").status_code == 401
    headers = {"Authorization": "Bearer s3cret-token"}
    assert api.post("/jobs", json={"groups": {"agent": "sac"}}, headers=headers).status_code == 422
    assert api.delete("/jobs/x", headers=headers).status_code == 404
    assert api.get("/runs").status_code == 200  # reading needs no token


def test_act_answers_one_observation_with_its_latency(api, store):
    checkpoint = os.path.relpath(store["inside"] / "ppo" / "policy.pt", ROOT)
    window = [[0.0] * 19 for _ in range(32)]
    answer = api.post("/act", json={"checkpoint": checkpoint, "market": window})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["target"] in (0.0, 1.0) and body["latency_ms"] > 0
    assert api.post("/act", json={"checkpoint": checkpoint, "market": window[:5]}).status_code == 422
    assert api.post("/act", json={"checkpoint": "../../etc/passwd", "market": window}).status_code == 400
    assert api.post("/act", json={"checkpoint": "README.md", "market": window}).status_code == 404


def test_prometheus_metrics(api):
    api.get("/health")
    text = api.get("/metrics").text
    assert 'rltrade_api_requests_total{method="GET",path="/health",status="200"}' in text
    assert 'rltrade_jobs{status="running"} 0.0' in text and 'rltrade_paper_equity{session="demo"}' in text
    assert 'rltrade_paper_latency_ms{session="demo"}' in text


def test_the_server_refuses_to_bind_beyond_loopback_without_a_token():
    env = {k: v for k, v in os.environ.items() if k != "RLTRADE_API_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "src.api"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, "RLTRADE_API_HOST": "0.0.0.0"},
        timeout=120,
    )
    assert result.returncode != 0
    assert "RLTRADE_API_HOST=0.0.0.0 is beyond loopback; set RLTRADE_API_TOKEN first" in result.stderr


@pytest.mark.slow
def test_job_state_survives_an_api_restart(tmp_path, store):
    """A job started by one API process is followed to its end by the next one (SQLite state and
    the exit code written beside the job's log)."""
    from src.api.jobs import JobStore
    from src.api.models import JobRequest

    first = JobStore(tmp_path / "jobs", max_jobs=1, env={"MLFLOW_TRACKING_URI": mlflow_store(tmp_path, "m.db")})
    job = first.submit(
        JobRequest(groups={"agent": "buy_and_hold"}, overrides=["data.n_bars=2500", "backtest.plots=false"])
    )
    assert job.status == "running"
    first.close()  # the API goes away; the job runs on
    second = JobStore(tmp_path / "jobs", max_jobs=1)
    try:
        deadline = time.monotonic() + 180
        while second.get(job.id).status == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
            second.tick()
        done = second.get(job.id)
        assert done.status == "finished" and done.returncode == 0
        assert (Path(done.output_dir) / "run" / "summary.json").is_file()
    finally:
        second.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_a_real_server_runs_a_job_to_completion_and_cancels_one(tmp_path, store):
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_store(tmp_path),
        "RLTRADE_API_PORT": str(port),
        "RLTRADE_API_MAX_JOBS": "1",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "src.api"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(f"{base}/health", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        job = requests.post(
            f"{base}/jobs",
            json={"groups": {"agent": "buy_and_hold"}, "overrides": ["data.n_bars=2500", "backtest.plots=false"]},
            timeout=60,
        ).json()
        slow = requests.post(f"{base}/jobs", json={"overrides": ["agent.total_frames=100000000"]}, timeout=60).json()
        assert requests.get(f"{base}/jobs/{slow['id']}", timeout=10).json()["status"] == "queued"  # max_jobs=1
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            state = requests.get(f"{base}/jobs/{job['id']}", timeout=10).json()
            if state["status"] in ("finished", "failed"):
                break
            time.sleep(0.5)
        assert state["status"] == "finished", state["log_tail"]
        assert any("buy_and_hold" in line for line in state["log_tail"])
        found = requests.get(f"{base}/runs", params={"agent": "buy_and_hold"}, timeout=30).json()
        assert found["total"] == 1 and found["runs"][0]["status"] == "FINISHED"
        while requests.get(f"{base}/jobs/{slow['id']}", timeout=10).json()["status"] == "queued":
            time.sleep(0.2)
        cancelled = requests.delete(f"{base}/jobs/{slow['id']}", timeout=10).json()
        assert cancelled["status"] == "cancelled"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
