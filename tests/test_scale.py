"""Scale: the parallel kernel, training checkpoints and resume, Ctrl-C, the Ray worker scaler,
Ray collection, resources=auto, the GPU learner."""

import numba
import numpy as np
import pytest
import torch

from src import registry
from src.agents.collection import WorkerScaler, worker_counts
from src.agents.resume import TrainingCheckpoints, TrainingInterrupted, fingerprint
from src.envs import kernels
from src.envs.market import MarketRules, VectorMarket
from src.envs.torchrl_env import feature_columns
from src.resources import Compute
from tests.conftest import compose_config

TINY = [
    "agent.total_frames=3072",
    "agent.frames_per_batch=512",
    "agent.minibatch_size=256",
    "agent.progress=false",
    "env.num_envs=8",
    "env.episode_length=64",
    "agent.eval_every=2",
    "agent.checkpoint_every=1",
]
RISKY = MarketRules(
    transaction_fee=0.001,
    slippage_bps=2.0,
    impact=0.05,
    max_participation=0.5,
    stop_loss=0.01,
    take_profit=0.03,
    trailing_stop=0.02,
    borrow_per_bar=1e-4,
    funding_per_bar=1e-4,
    drawdown_limit=0.1,
    pause_bars=3,
    max_leverage=2.0,
    episode_length=40,
    reward="differential_sharpe",
    reward_param=0.05,
)


def _run_market(market_df, threads: int, blocks: int | None, obs_offset: int = 0) -> dict:
    """The market's arrays after 300 steps of the serial kernel (``blocks`` None) or of the
    parallel one cutting the envs into ``blocks``, on ``threads`` threads; the observations
    written ``obs_offset`` floats past a 64-byte boundary (the streamed copy's unaligned head and
    tail)."""
    numba.set_num_threads(threads)
    market = VectorMarket(market_df, feature_columns(market_df), 257, 16, RISKY, seed=5, auto_reset=True)
    shape = market.obs.shape
    market.use_output_buffers(obs=kernels.stream_buffer((market.obs.size + obs_offset,))[obs_offset:].reshape(shape))
    market.reset()
    targets = np.random.default_rng(1).uniform(-2, 2, size=(300, 257))
    for row in targets:
        if blocks is None:
            kernels.step_envs(row, *market._kernel_args(True))
        else:
            kernels.step_envs_parallel(row, *market._kernel_args(True), blocks)
    return market.state()


def test_the_parallel_kernel_is_bit_identical_for_any_thread_count(market_df):
    """prange over envs with 1 and every available thread, in one block per thread or in 7,
    gives the serial kernel's arrays bit for bit, with every rule on and auto-resets happening;
    so do its streamed observation stores into rows on and off their alignment."""
    before = numba.get_num_threads()
    serial = _run_market(market_df, 1, blocks=None)
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            for blocks, obs_offset in ((threads, 0), (7, 0), (threads, 1), (7, 3)):
                parallel = _run_market(market_df, threads, blocks, obs_offset)
                for name, array in serial.items():
                    assert np.array_equal(array, parallel[name]), (name, threads, blocks, obs_offset)
    finally:
        numba.set_num_threads(before)


def _fit(cfg, market_df, log, store):
    env = registry.build("env", cfg.env, market_df, seed=0)
    agent = registry.build("agent", cfg.agent, env, seed=0)
    # a deterministic stand-in for the validation backtest: a function of the weights
    score = lambda a: {"sharpe": float(sum(p.detach().sum() for p in a.actor.parameters()))}  # noqa: E731
    agent.fit(env, log, evaluate=score, checkpoints=store)
    return agent


def test_an_interrupted_training_resumes_to_the_same_result_bit_for_bit(market_df, tmp_path):
    cfg = compose_config(TINY)
    whole_log = []
    whole = _fit(cfg, market_df, lambda m, step: whole_log.append((step, m)), TrainingCheckpoints(tmp_path / "whole"))

    store = TrainingCheckpoints(tmp_path / "cut")
    cut_log = []

    def interrupt_at_the_fourth_iteration(metrics, step):
        if step == 4 * 512:
            raise KeyboardInterrupt  # what Ctrl-C raises in the loop
        cut_log.append((step, metrics))

    with pytest.raises(TrainingInterrupted) as stopped:
        _fit(cfg, market_df, interrupt_at_the_fourth_iteration, store)
    assert stopped.value.checkpoint == store.path
    assert torch.load(store.path, weights_only=False)["iteration"] == 3  # the last finished one
    cfg.agent.resume = True
    resumed = _fit(cfg, market_df, lambda m, step: cut_log.append((step, m)), store)

    deterministic = lambda m: {k: v for k, v in m.items() if not k.startswith("perf/")}  # noqa: E731
    assert [(s, deterministic(m)) for s, m in cut_log] == [(s, deterministic(m)) for s, m in whole_log]
    for mine, theirs in zip(resumed.actor.state_dict().values(), whole.actor.state_dict().values()):
        assert torch.equal(mine, theirs)


def test_the_checkpoint_fingerprint_ignores_only_what_does_not_change_training():
    base = compose_config()
    assert fingerprint(base) == fingerprint(
        compose_config(["agent.resume=true", "agent.progress=false", "mode=stress", "mlflow.experiment=x"])
    )
    for changed in (["agent.lr=0.001"], ["seed=8"], ["env.num_envs=64"], ["data.n_bars=9000"]):
        assert fingerprint(compose_config(changed)) != fingerprint(base), changed


def test_training_logs_where_its_time_and_memory_go(market_df):
    cfg = compose_config(TINY)
    logged = []
    _fit(cfg, market_df, lambda m, step: logged.append(m), None)
    iterations = [m for m in logged if "train/lr" in m]
    assert len(iterations) == 6
    for metrics in iterations:
        assert metrics["perf/frames_per_second"] > 0 and metrics["perf/rss_gb"] > 0.05
        assert metrics["perf/collect_seconds"] > 0 and metrics["perf/update_seconds"] > 0
        assert "perf/cpu_percent" in metrics


# frames/s per iteration, as measured on this machine and on a loaded one (scale_every = 2)
RISING = [1000, 1040, 1900, 1880, 1950, 1990, 2000, 1980]  # 2 -> 4 helps, 4 -> 8 does not
CROWDED = [2000, 2000, 3600, 3640, 3600, 3600, 1500, 1400]  # 4 workers, then a competing trial


def test_the_worker_scaler_adds_workers_while_throughput_rises_and_goes_back_when_it_stops():
    scaler = WorkerScaler(2, [2, 4, 8], threshold=0.1, every=2)
    decisions = [scaler.observe(rate) for rate in RISING[:6]]
    assert [d[0] if d else None for d in decisions] == [None, 4, None, 8, None, 4]
    assert "back to 4" in decisions[5][1] and scaler.ceiling == 8
    assert [scaler.observe(rate) for rate in RISING[6:]] == [None, None]  # holds at 4, below the ceiling


def test_the_worker_scaler_removes_workers_when_throughput_falls():
    scaler = WorkerScaler(2, [2, 4], threshold=0.1, every=2)
    decisions = [scaler.observe(rate) for rate in CROWDED]
    assert [d[0] if d else None for d in decisions] == [None, 4, None, None, None, None, None, 2]
    assert "fell" in decisions[-1][1] and "removing" in decisions[-1][1]


def test_the_worker_scaler_goes_back_up_when_removing_workers_made_it_slower():
    """A one-off dip at 4 workers removes two; 2 workers then give far less than the dipped
    rate, so the scaler returns to 4 at its next decision rather than after a reprobe, and
    holds there (series from a Ray Tune trial on this machine)."""
    scaler = WorkerScaler(2, [2, 4], threshold=0.1, every=2, reprobe_every=20)
    dipped = [3100, 3100, 9000, 9000, 9900, 9900, 8900, 8800, 2400, 2500, 9500, 9500, 9600, 9400]
    decisions = [scaler.observe(rate) for rate in dipped]
    assert [d[0] if d else None for d in decisions] == [None, 4, None, None, None, None, None, 2, None, 4] + [None] * 4
    assert "removing" in decisions[7][1]
    assert "4 -> 2 workers changed frames/s by -72% (a fall beyond 10%); back to 4" in decisions[9][1]


def test_the_worker_scaler_probes_upwards_again_after_holding():
    """A count held for reprobe_every iterations tries the next count up again: after a
    competing trial made it remove workers, and after a failed rise set a ceiling."""
    crowded = WorkerScaler(2, [2, 4], threshold=0.1, every=2, reprobe_every=6)
    freed = CROWDED + [1500] * 6 + [3500, 3500]  # back at 2 workers; the competitor then leaves
    decisions = [crowded.observe(rate) for rate in freed]
    assert [d[0] if d else None for d in decisions] == [None, 4] + [None] * 5 + [2] + [None] * 5 + [4, None, None]
    assert "held 2 workers for 6 iterations (1,500 frames/s); probing 4 again" in decisions[13][1]

    capped = WorkerScaler(2, [2, 4, 8], threshold=0.1, every=2, reprobe_every=4)
    decisions = [capped.observe(rate) for rate in RISING + [1990, 2000, 2000, 1990]]
    assert [d[0] if d else None for d in decisions] == [None, 4, None, 8, None, 4, None, None, None, 8, None, 4]
    assert "probing 8 again" in decisions[9][1] and "back to 4" in decisions[11][1] and capped.ceiling == 8


def test_worker_counts_split_the_envs_evenly():
    assert worker_counts(32, 2, 8) == [2, 4, 8]
    assert worker_counts(24, 2, 8) == [2, 3, 4, 6, 8]
    with pytest.raises(ValueError, match="split evenly"):
        worker_counts(7, 2, 6)


def test_auto_resources_pick_the_fastest_candidate_and_log_the_probe(market_df):
    from src.agents.calibrate import calibrated

    cfg = compose_config(
        TINY
        + [
            "resources=auto",
            "resources.calibrate.num_envs=[8,16]",
            "resources.calibrate.minibatch_size=[128,4096]",
            "resources.calibrate.iterations=1",
        ]
    )
    tuned, table = calibrated(cfg, market_df, Compute(torch.device("cpu"), 1))
    assert table["num_envs"] == [8, 8, 16, 16]
    assert [r is None for r in table["frames_per_second"]] == [False, True, False, True]
    best = int(np.nanargmax([r or np.nan for r in table["frames_per_second"]]))
    assert table["note"][best] == "chosen"
    assert (tuned.env.num_envs, tuned.agent.minibatch_size) == (table["num_envs"][best], 128)
    assert tuned.agent.frames_per_batch == tuned.env.num_envs * 64  # the rollout length is kept


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none here)")
def test_the_learner_trains_on_the_gpu_and_acts_on_cpu_tensors(market_df):
    cfg = compose_config(TINY)
    env = registry.build("env", cfg.env, market_df, seed=0)
    agent = registry.build("agent", cfg.agent, env, seed=0)
    agent.fit(env, lambda m, s: None, compute=Compute(torch.device("cuda"), 1))
    assert next(agent.actor.parameters()).is_cuda
    td = env.reset()
    assert agent.act(td["market"], td["account"]).device.type == "cpu"


def test_a_gpu_on_a_machine_without_one_is_a_clear_error():
    from src.config_checks import ConfigError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the error cannot happen")
    with pytest.raises(ConfigError, match="resources.device='cuda' but torch sees no CUDA GPU"):
        registry.build("resources", compose_config(["resources=gpu"]).resources)


@pytest.mark.slow
def test_ray_workers_collect_reproducibly(market_df):
    """A real local Ray on 127.0.0.1: 2 workers (TorchRL's RayCollector), each with its own numba
    env batch, train PPO and log every iteration; the same seed gives the same weights."""
    import ray

    ray.init(num_cpus=5, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        fixed = compose_config(TINY + ["resources=ray", "resources.ray.autoscale=false", "agent.total_frames=1024"])
        weights, logs = [], []
        for _ in range(2):
            logged = []
            env = registry.build("env", fixed.env, market_df, seed=0)
            agent = registry.build("agent", fixed.agent, env, seed=0)
            agent.fit(
                env,
                lambda m, step, logged=logged: logged.append(m),
                compute=registry.build("resources", fixed.resources),
            )
            weights.append([p.detach().clone() for p in agent.actor.parameters()])
            logs.append([m for m in logged if "train/lr" in m])
        assert len(logs[0]) == 2 and all(m["perf/ray_workers"] == 2 for m in logs[0])
        assert all(torch.equal(a, b) for a, b in zip(*weights))
        assert [m["train/reward_per_step"] for m in logs[0]] == [m["train/reward_per_step"] for m in logs[1]]
        # worker-count changes are tested on recorded throughput series above: a live 2 -> 4
        # restart costs ~20 s of the suite's 12 minutes
    finally:
        ray.shutdown()


def _start_run(tmp_path, *args):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT, mlflow_store

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store(tmp_path), "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "src.run",
        "agent.total_frames=32768",
        "agent.checkpoint_every=1",
        f"agent.training_checkpoints={tmp_path}/checkpoints",
        "data.n_bars=4000",
        *args,
    ]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interrupt_after_the_first_checkpoint(tmp_path, signum) -> tuple[int, str]:
    import time

    process = _start_run(tmp_path, f"hydra.run.dir={tmp_path}/first")
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "checkpoints").glob("*/last.pt")) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    return process.returncode, stderr


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_marks_the_run_killed_and_the_rerun_resumes_it(tmp_path):
    import signal

    from tests.conftest import runs

    code, stderr = _interrupt_after_the_first_checkpoint(tmp_path, signal.SIGINT)
    assert code == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted: training stopped, checkpoint ")
    [run] = runs(tmp_path)
    assert run.info.status == "KILLED"

    process = _start_run(tmp_path, f"hydra.run.dir={tmp_path}/second", "agent.resume=true")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "resuming training at iteration" in stderr
    [resumed] = runs(tmp_path)  # the same MLflow run, continued
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert "test/sharpe" in resumed.data.metrics


def test_sigterm_is_handled_like_ctrl_c():
    """SIGTERM raises the KeyboardInterrupt that Ctrl-C raises (the CLI path after it is the
    Ctrl-C test's), and the previous handler comes back afterwards."""
    import os
    import signal

    from src.run import sigterm_interrupts

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before
