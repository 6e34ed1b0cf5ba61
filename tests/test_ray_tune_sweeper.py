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
from tests.conftest import ROOT, compose_config, mlflow_store, runs


def test_every_override_form_maps_to_its_ray_tune_domain():
    space, fixed = parse(
        [
            "a=1,2,3",
            "b=choice(x,y)",
            "c=range(0,6,2)",
            "d=tag(choice, range(1,4))",
            "e=interval(0.1,0.5)",
            "f=tag(log, interval(1e-4, 1e-2))",
            "g=int(interval(2, 9))",
            "h=tag(log, int(interval(1, 64)))",
            "i=7",
        ],
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


def test_a_test_metric_is_refused_as_the_sweep_metric():
    with pytest.raises(ValueError, match=r"metric='test_sharpe': a sweep selects on a validation metric"):
        RayTuneSweeper(metric="test_sharpe")


def sweep_runs(tmp_path, uri: str | None = None):
    """(parent runs, trial runs, test-of-best runs) in the test's MLflow store."""
    found = runs(tmp_path, uri)
    parents = [r for r in found if r.info.run_name.startswith("sweep-")]
    tested = [r for r in found if r.info.run_name.endswith("-test-of-best")]
    trials = [r for r in found if r not in parents and r not in tested]
    return parents, trials, tested


SWEEP = ["--multirun", "hydra/sweeper=ray_tune", "hydra.sweeper.num_cpus=2", "hydra.sweeper.num_samples=1"]


def sweep(uri: str, *overrides: str) -> subprocess.CompletedProcess:
    """``python -m src.run`` with ``SWEEP`` (Ray Tune on 2 CPUs) and ``overrides``, logging to ``uri``."""
    return subprocess.run(
        [sys.executable, "-m", "src.run", *SWEEP, *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"},
        timeout=300,
    )


SHORT_TRIAL = [
    "data.n_bars=2500",
    "agent.frames_per_batch=1024",
    "agent.minibatch_size=512",
    "agent.progress=false",
    "env.num_envs=16",
    "env.episode_length=256",
    "backtest.plots=false",
]


@pytest.mark.slow
def test_real_sweep_with_failing_trials_on_an_mlflow_server(tmp_path, mlflow_server):
    """Logged to a real MLflow tracking server (as on a cluster): a sweep with a failing trial,
    a refused change of search space, then a new sweep (resume=false) whose trials all fail."""
    sweep_dir = tmp_path / "sweep"
    result = sweep(
        mlflow_server,
        "hydra.sweeper.scheduler=asha",
        f"hydra.sweep.dir={sweep_dir}",
        "agent.lr=0.001,0.0003,0.0001,-1.0",  # lr=-1 fails inside Adam: recorded, not fatal
        "agent.total_frames=2048",
        "agent.eval_every=1",
        *SHORT_TRIAL,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Ray Tune trials" in result.stdout and "Invalid learning rate" in result.stdout
    (parent,), children, (tested,) = sweep_runs(tmp_path, mlflow_server)
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in children + [tested])
    assert len(children) == 4 and parent.info.status == "FINISHED"
    assert sorted(r.data.params["agent.lr"] for r in children) == ["-1.0", "0.0001", "0.0003", "0.001"]
    (failed,) = [r for r in children if r.data.params["agent.lr"] == "-1.0"]
    assert failed.info.status == "FAILED"
    ok = [r for r in children if r is not failed]
    assert all("val/sharpe" in r.data.metrics for r in ok)  # reported at every evaluation
    finished = [r for r in ok if r.info.status == "FINISHED"]
    stopped = [r for r in ok if r.info.status == "KILLED"]  # by ASHA, which may stop none
    assert len(finished) + len(stopped) == 3 and finished
    assert not any(k.startswith("test/") for r in children for k in r.data.metrics)  # validation only
    assert all(r.data.tags["stopped_by"] == "scheduler" for r in stopped)
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.trials == 4 and results.failed_trials == 1
    best = max(finished, key=lambda r: r.data.metrics["val/sharpe"])
    assert results.best_value == pytest.approx(best.data.metrics["val/sharpe"])
    assert str(results.best_evaluated_params["agent.lr"]) == best.data.params["agent.lr"]
    # the best trial's policy is tested once, on the parent run
    assert tested.data.params["agent.lr"] == best.data.params["agent.lr"]
    assert tested.data.params["agent.checkpoint"].endswith("policy.pt")
    assert parent.data.metrics["best_test/sharpe"] == pytest.approx(tested.data.metrics["test/sharpe"])
    assert results.best_test["test/sharpe"] == pytest.approx(tested.data.metrics["test/sharpe"])

    # (rerunning the same sweep resumes it without repeating a trial: see the interrupted-sweep test)

    # another search space in the same sweep dir is not a resume: refused, nothing runs
    changed = sweep(mlflow_server, f"hydra.sweep.dir={sweep_dir}", "agent.lr=0.001,0.0003", "data.n_bars=2500")
    assert changed.returncode != 0 and "was started with another search space" in changed.stderr
    assert len(runs(tmp_path, mlflow_server)) == 6  # parent, 4 trials, the test of the best: nothing new

    # resume=false starts a new sweep with a new parent, the old one left as it was; its trials
    # all fail, so the run fails and its parent ends FAILED
    all_fail = sweep(
        mlflow_server,
        "hydra.sweeper.resume=false",
        f"hydra.sweep.dir={sweep_dir}",
        "agent.lr=-1.0,-2.0",
        "agent.total_frames=1024",
        *SHORT_TRIAL,
    )
    assert all_fail.returncode != 0 and "no trial completed" in all_fail.stderr
    parents, trial_runs, _ = sweep_runs(tmp_path, mlflow_server)
    (new,) = [p for p in parents if p.info.run_id != parent.info.run_id]
    (old,) = [p for p in parents if p.info.run_id == parent.info.run_id]
    assert old.data.metrics["trials"] == 4 and old.info.status == "FINISHED"
    assert new.info.status == "FAILED" and len(trial_runs) == 6
    new_trials = [r for r in trial_runs if r.data.tags["mlflow.parentRunId"] == new.info.run_id]
    assert sorted(r.data.params["agent.lr"] for r in new_trials) == ["-1.0", "-2.0"]
    assert {r.info.status for r in new_trials} == {"FAILED"}
    assert list((sweep_dir / "ray_results").glob("sweep-replaced-*"))


TINY_SWEEP = [
    *SWEEP,
    "hydra.sweeper.max_concurrent_trials=1",
    "agent.lr=0.001,0.0003,0.0001",
    "agent.total_frames=2048",
    "agent.eval_every=1",
    *SHORT_TRIAL,
]


def finished_trials(tmp_path) -> list:
    try:
        return [
            r
            for r in runs(tmp_path)
            if r.info.status == "FINISHED"
            and not r.info.run_name.startswith("sweep-")
            and not r.info.run_name.endswith("-test-of-best")
        ]
    except Exception:  # noqa: BLE001 - the store may not exist yet
        return []


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_repeating_trials(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "src.run", *TINY_SWEEP, f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store(tmp_path)}
    first = subprocess.Popen(
        command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while not finished_trials(tmp_path) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(1)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C: Ray Tune saves its state and stops
    first.wait(timeout=120)
    done_before = {r.data.params["agent.lr"] for r in finished_trials(tmp_path)}
    assert 0 < len(done_before) < 3, "the interrupt should land mid-sweep"
    (parent,), _, _ = sweep_runs(tmp_path)
    assert parent.info.status == "KILLED"  # interrupted, not FINISHED
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    trials = finished_trials(tmp_path)
    assert sorted(r.data.params["agent.lr"] for r in trials) == ["0.0001", "0.0003", "0.001"]
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.trials == 3 and results.failed_trials == 0
    (parent,), children, (tested,) = sweep_runs(tmp_path)
    assert parent.info.status == "FINISHED" and tested.info.status == "FINISHED"
    assert not [r for r in children if r.info.status == "RUNNING"]  # no orphan left RUNNING


def test_a_trial_reserves_its_ray_collection_workers_in_its_placement_group():
    """A trial with resources=ray reserves its learner's threads plus a bundle per collection
    worker it may use (max_workers with autoscale, else num_workers), the CPU and memory each
    worker asks Ray for (a bundle without the memory could not hold a worker); others reserve
    threads."""
    from hydra_plugins.ray_tune_sweeper.ray_tune_sweeper import _trial_resources

    worker = {"CPU": 1, "memory": 1024**3}  # resources.ray.worker_memory_gb: 1
    scaled = _trial_resources(compose_config(["resources=ray"]), 2)
    assert scaled.bundles == [{"CPU": 2}] + [worker] * 8
    fixed = _trial_resources(compose_config(["resources=ray", "resources.ray.autoscale=false"]), 2)
    assert fixed.bundles == [{"CPU": 2}, worker, worker]
    assert _trial_resources(compose_config(), 2) == {"cpu": 2}
