"""The Ray Tune sweeper plugin: override parsing, discovery, and real sweeps on local Ray."""
import os
import signal
import subprocess
import sys
import time

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform

from hydra_plugins.ray_tune_sweeper.ray_tune_sweeper import RayTuneSweeper
from hydra_plugins.ray_tune_sweeper.search_space import parse
from tests.conftest import ROOT, compose_config, run_cli, runs


def test_every_override_form_maps_to_its_ray_tune_domain():
    space, fixed = parse(
        ["a=1,2,3", "b=choice(x,y)", "c=range(0,6,2)", "d=tag(choice, range(1,4))",
         "e=interval(0.1,0.5)", "f=tag(log, interval(1e-4, 1e-2))", "g=int(interval(2, 9))",
         "h=tag(log, int(interval(1, 64)))", "i=7"],
        {"j": "choice(8, 16)", "a": "choice(9)"},
    )
    assert space["a"] == {"grid_search": [1, 2, 3]}  # the command line wins over params
    assert isinstance(space["b"], Categorical) and space["b"].categories == ["x", "y"]
    assert space["c"] == {"grid_search": [0, 2, 4]}
    assert isinstance(space["d"], Categorical) and space["d"].categories == [1, 2, 3]
    assert isinstance(space["e"], Float) and (space["e"].lower, space["e"].upper) == (0.1, 0.5)
    assert isinstance(space["f"].get_sampler(), LogUniform)
    assert isinstance(space["g"], Integer) and (space["g"].lower, space["g"].upper) == (2, 10)
    assert isinstance(space["h"], Integer) and isinstance(space["h"].get_sampler(), LogUniform)
    assert isinstance(space["j"], Categorical)
    assert fixed == ["i=7"]


def test_plugin_is_discovered_and_registered():
    names = {f"{p.__module__}.{p.__name__}" for p in Plugins.instance().discover(Sweeper)}
    assert f"{RayTuneSweeper.__module__}.RayTuneSweeper" in names
    cfg = compose_config(["hydra/sweeper=ray_tune", "hydra.sweeper.num_samples=3"], hydra=True)
    assert cfg.hydra.sweeper._target_.endswith("RayTuneSweeper")
    assert cfg.hydra.sweeper.num_samples == 3 and cfg.hydra.sweeper.scheduler == "fifo"
    sweep = compose_config(["experiment=ppo_sweep"], hydra=True).hydra.sweeper
    assert sweep.scheduler == "asha" and sweep.num_samples >= 8
    assert set(sweep.params) == {"agent.lr", "agent.entropy_coeff", "env.window_size", "agent.network"}


@pytest.mark.slow
def test_real_sweep_with_a_failing_trial(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        tmp_path, "--multirun", "hydra/sweeper=ray_tune", "hydra.sweeper.num_cpus=2", "hydra.sweeper.num_samples=1",
        "hydra.sweeper.scheduler=asha", f"hydra.sweep.dir={sweep_dir}",
        "agent.lr=0.001,0.0003,0.0001,-1.0",  # lr=-1 fails inside Adam: recorded, not fatal
        "data.n_bars=2500", "agent.total_frames=2048", "agent.frames_per_batch=1024",
        "agent.minibatch_size=512", "agent.eval_every=1", "agent.progress=false",
        "env.num_envs=16", "env.episode_length=256", "backtest.plots=false")
    assert "Ray Tune trials" in result.stdout and "Invalid learning rate" in result.stdout
    found = runs(tmp_path)
    (parent,) = [r for r in found if r.info.run_name.startswith("sweep-")]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    assert sorted(r.data.params["agent.lr"] for r in children) == ["-1.0", "0.0001", "0.0003", "0.001"]
    (failed,) = [r for r in children if r.data.params["agent.lr"] == "-1.0"]
    assert failed.info.status == "FAILED"
    ok = [r for r in children if r is not failed]
    assert all("val/sharpe" in r.data.metrics for r in ok)  # reported at every evaluation
    finished = [r for r in ok if r.info.status == "FINISHED"]
    stopped = [r for r in ok if r.info.status == "KILLED"]  # by ASHA, which may stop none
    assert len(finished) + len(stopped) == 3 and finished
    assert all("test/sharpe" in r.data.metrics for r in finished)
    assert all(r.data.tags["stopped_by"] == "scheduler" for r in stopped)
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.trials == 4 and results.failed_trials == 1
    best = max(finished, key=lambda r: r.data.metrics["val/sharpe"])
    assert results.best_value == pytest.approx(best.data.metrics["val/sharpe"])
    assert str(results.best_evaluated_params["agent.lr"]) == best.data.params["agent.lr"]

    # running the same sweep again resumes it from its stored state: no trial runs twice
    run_cli(tmp_path, "--multirun", "hydra/sweeper=ray_tune", "hydra.sweeper.num_cpus=2", "hydra.sweeper.num_samples=1",
            f"hydra.sweep.dir={sweep_dir}", "agent.lr=0.001,0.0003,0.0001,-1.0",
            "data.n_bars=2500", "agent.total_frames=2048", "agent.frames_per_batch=1024",
            "agent.minibatch_size=512", "agent.eval_every=1", "agent.progress=false",
            "env.num_envs=16", "env.episode_length=256", "backtest.plots=false")
    trial_runs = [r for r in runs(tmp_path) if not r.info.run_name.startswith("sweep-")]
    assert len(trial_runs) == 4 and len(runs(tmp_path)) == 5  # the parent run is reopened
    assert OmegaConf.load(sweep_dir / "optimization_results.yaml").best_value == results.best_value


TINY_SWEEP = ["--multirun", "hydra/sweeper=ray_tune", "hydra.sweeper.num_cpus=2",
              "hydra.sweeper.num_samples=1", "hydra.sweeper.max_concurrent_trials=1",
              "agent.lr=0.001,0.0003,0.0001,0.00003", "data.n_bars=2500", "agent.total_frames=4096",
              "agent.frames_per_batch=1024", "agent.minibatch_size=512", "agent.eval_every=1",
              "agent.progress=false", "env.num_envs=16", "env.episode_length=256",
              "backtest.plots=false"]


def finished_trials(tmp_path) -> list:
    try:
        return [r for r in runs(tmp_path)
                if r.info.status == "FINISHED" and not r.info.run_name.startswith("sweep-")]
    except Exception:  # noqa: BLE001 - the store may not exist yet
        return []


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_repeating_trials(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "src.run", *TINY_SWEEP, f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not finished_trials(tmp_path) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(1)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C: Ray Tune saves its state and stops
    first.wait(timeout=120)
    done_before = {r.data.params["agent.lr"] for r in finished_trials(tmp_path)}
    assert 0 < len(done_before) < 4, "the interrupt should land mid-sweep"
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    trials = finished_trials(tmp_path)
    assert sorted(r.data.params["agent.lr"] for r in trials) == ["0.0001", "0.0003", "0.001", "3e-05"]
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.trials == 4 and results.failed_trials == 0
