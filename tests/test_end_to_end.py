"""``python -m src.run`` end to end, into a real MLflow sqlite store."""

import json
import os
import subprocess
import sys

import mlflow
import pytest

from tests.conftest import ROOT, run_cli, runs

TINY = [
    "data.n_bars=2500",
    "agent.total_frames=2048",
    "agent.frames_per_batch=1024",
    "agent.minibatch_size=512",
    "env.num_envs=16",
    "env.episode_length=256",
]
TEST_METRICS = [
    "total_return",
    "cagr",
    "volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "max_drawdown_bars",
    "calmar",
    "var_95",
    "cvar_95",
    "win_rate",
    "profit_factor",
    "avg_trade",
    "exposure",
    "turnover",
    "fees",
    "financing",
    "trades",
]


@pytest.mark.slow
def test_single_run_logs_metrics_params_and_artifacts(tmp_path):
    out = tmp_path / "out"
    result = run_cli(tmp_path, *TINY, f"hydra.run.dir={out}")
    assert "buy_and_hold" in result.stdout and "Sharpe" in result.stdout
    (run,) = runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert {f"test/{m}" for m in TEST_METRICS} <= set(run.data.metrics)
    assert "baseline/buy_and_hold/sharpe" in run.data.metrics
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/reward_per_step")
    assert [m.step for m in history] == [1024, 2048]  # a training curve, one point per batch
    assert run.data.params["agent.lr"] == "0.0003" and run.data.params["env.window_size"] == "32"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"config.yaml", "trades.csv", "equity.csv", "policy.pt", "summary.json", "report.html", "plots"} <= artifacts
    plots = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert {f"plots/{name}.png" for name in ("equity", "drawdown", "returns", "position", "rolling_sharpe")} <= plots
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "max_drawdown" in page  # self-contained
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["agents"]) == {"ppo", "buy_and_hold", "random"}
    assert summary["agents"]["ppo"]["sharpe"] == pytest.approx(run.data.metrics["test/sharpe"])

    # the saved policy, loaded back, backtests to the same numbers without training
    reloaded = tmp_path / "reloaded"
    run_cli(tmp_path, *TINY, f"agent.checkpoint={out / 'policy.pt'}", f"hydra.run.dir={reloaded}")
    again = json.loads((reloaded / "summary.json").read_text())
    assert again["agents"]["ppo"] == summary["agents"]["ppo"]


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    run_cli(tmp_path, *TINY, f"hydra.run.dir={first}")
    run_cli(tmp_path, *TINY, f"hydra.run.dir={second}")
    assert (first / "summary.json").read_text() == (second / "summary.json").read_text()


@pytest.mark.slow
def test_multirun_logs_one_run_per_job(tmp_path):
    tiny = [f"++{o}" if o.startswith("agent.") else o for o in TINY]  # baselines lack PPO's keys
    run_cli(
        tmp_path,
        "--multirun",
        *tiny,
        "agent=ppo,buy_and_hold",
        "scenario=none,flash_crash",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    found = runs(tmp_path)
    assert sorted(r.info.run_name for r in found) == [
        "buy_and_hold-flash_crash",
        "buy_and_hold-none",
        "ppo-flash_crash",
        "ppo-none",
    ]
    assert all(r.info.status == "FINISHED" for r in found)


@pytest.mark.slow
def test_baseline_with_scenario_and_fee_override(tmp_path):
    out = tmp_path / "out"
    run_cli(
        tmp_path,
        "agent=buy_and_hold",
        "scenario=low_liquidity",
        "env.transaction_fee=0.002",
        "data.n_bars=2500",
        f"hydra.run.dir={out}",
    )
    (run,) = runs(tmp_path)
    assert run.data.params["env.transaction_fee"] == "0.002"
    assert run.data.params["scenario.low_liquidity.volume_scale"] == "0.2"
    assert run.data.metrics["test/trades"] == 2  # bought once, closed at the end


@pytest.mark.slow
def test_unknown_name_fails_before_any_work(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    result = subprocess.run(
        [sys.executable, "-m", "src.run", "agent.name=sac"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "Valid names: buy_and_hold, ippo, mappo, ppo, random, sma_cross" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_stress_mode_reports_every_scenario(tmp_path):
    out = tmp_path / "out"
    # 3,000 bars: the default trend_reversal window (240 bars at 0.4) must fit the test split
    result = run_cli(tmp_path, *TINY, "data.n_bars=3000", "mode=stress", f"hydra.run.dir={out}")
    assert "Stress test of ppo" in result.stdout
    table = json.loads((out / "stress.json").read_text())
    # stress.scenarios defaults to every registered scenario: none first, then by name
    scenarios = ["none", "fee_spike", "flash_crash", "gap", "low_liquidity", "trend_reversal", "volatility_spike"]
    assert list(table) == scenarios and all(set(table[s]) == {"ppo", "buy_and_hold"} for s in scenarios)
    assert table["flash_crash"]["buy_and_hold"]["total_return"] < table["none"]["buy_and_hold"]["total_return"]
    assert all((out / "plots" / s / "equity.png").is_file() for s in scenarios)
    (run,) = runs(tmp_path)
    assert "stress/gap/ppo/sharpe" in run.data.metrics
    stored = {a.path for s in scenarios for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, f"plots/{s}")}
    assert stored == {f"plots/{s}/equity.png" for s in scenarios}  # one per scenario, none overwritten


def test_a_range_error_prints_one_line_without_a_traceback(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    result = subprocess.run(
        [sys.executable, "-m", "src.run", "backtest.sizing.target_vol=-1", f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: backtest.sizing.target_vol=-1 is out of range; valid: a number in (0, inf]"
    )
