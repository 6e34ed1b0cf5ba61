"""Speed benchmark: ``python -m src.bench [--suite env|ppo|grid|features|paper] [--json PATH]``.

Suite ``grid``: the 75-combination SMA grid on GOOG daily here, in backtesting.py and in vectorbt
(``src/bench_grid.py``).

Suite ``paper``: a replay paper session (``mode=paper feed=replay``) of ``--bars`` bars of the
default synthetic market's test split, for the default MLP PPO policy and buy-and-hold: decision
latency p50/p99/max (bar arrival -> target decided: features on the bars so far, policy, journal
excluded) and bars per second, against the batch backtest of the same bars in the same process.

Suite ``features``: seconds for ``features=ta_full`` on ``--bars`` synthetic bars (default
1,000,000): TA-Lib's own calls alone, the whole pipeline, the pipeline writing its cache, and the
cached reload, each also as a ratio to TA-Lib's time.

Suite ``ppo``: PPO training frames/s for N in {1024, 4096, 16384} envs with a 2 x 256 MLP on
``--device`` (cpu or cuda), and the GPU's utilisation and memory sampled (NVML) while it trains.

Suite ``env`` (default):
Measures, for N in {1, 64, 1024, 4096} parallel envs with a 32 x 16 observation window, for each
thread count in ``--threads`` (torch's and numba's threads; default 1):
- kernel: env-steps/s of the numba kernel alone (in-kernel auto-reset; envs spread over the
  threads with ``prange`` from 16 envs on);
- wrapped: env-steps/s through the TorchRL ``TradingEnv`` (``step_and_maybe_reset``);
- ppo: training frames/s of PPO end to end (collection + GAE + updates), 2 x 64 MLP;
- python: a plain-Python reference of the same step (a loop over envs, one thread), run in the
  same process, which every other figure is quoted against;
- multi-agent kernel: agent-steps/s of src/envs/multi_market.py for E x K = 256 x 4 and 64 x 16;
- gym-anytrading: env-steps/s of its ``StocksEnv`` (one env, a 32 x 2 window) over the same bars,
  which every env figure is also quoted against (``x_gym_anytrading``).
"""

import argparse
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from src.agents.ppo import PPOAgent
from src.envs.actions import ActionSpace
from src.envs.market import MarketRules, VectorMarket
from src.envs.torchrl_env import TradingEnv

WINDOW, N_FEATURES, N_BARS = 32, 16, 20_000
ENV_COUNTS = (1, 64, 1024, 4096)
PPO_ENV_COUNTS = (1024, 4096, 16384)
MARKETS_X_AGENTS = ((256, 4), (64, 16))  # multi-agent kernel: E markets x K agents
RULES = MarketRules(transaction_fee=0.001, slippage_bps=1.0, episode_length=512)


def conf_dir() -> Path:
    """The project's Hydra config folder."""
    return Path(__file__).resolve().parents[1] / "conf"


def bench_frame(seed: int = 0) -> pd.DataFrame:
    """Random-walk OHLC with 16 random feature columns (the kernel's speed ignores their values)."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, N_BARS)))
    columns = {"$open": close, "$high": close, "$low": close, "$close": close, "$volume": np.ones(N_BARS)}
    columns |= {f"$f{j}": rng.normal(size=N_BARS).astype(np.float32) for j in range(N_FEATURES)}
    return pd.DataFrame(columns, index=pd.date_range("2024", periods=N_BARS, freq="h", tz="UTC"))


def feature_names() -> list[str]:
    return [f"$f{j}" for j in range(N_FEATURES)]


def timed(step, seconds: float, per_call: int) -> float:
    """Calls ``step()`` for about ``seconds`` (after a warm-up call); returns units per second."""
    step()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(8):
            step()
        calls += 8
    return calls * per_call / elapsed


def kernel_rate(df, n: int, seconds: float) -> float:
    market = VectorMarket(df, feature_names(), n, WINDOW, RULES, seed=0, auto_reset=True)
    market.reset()
    targets = np.random.default_rng(0).choice([0.0, 1.0], size=(64, n))
    k = iter(range(10**12))
    return timed(lambda: market.step(targets[next(k) % 64]), seconds, n)


def wrapped_rate(df, n: int, seconds: float) -> float:
    market = VectorMarket(df, feature_names(), n, WINDOW, RULES, seed=0)
    env = TradingEnv(market, ActionSpace("discrete", False, 1.0))
    actions = torch.randint(2, (64, n), generator=torch.Generator().manual_seed(0))
    state = {"td": env.reset(), "k": 0}

    def step():
        td = state["td"].set("action", actions[state["k"] % 64])
        state["k"] += 1
        _, state["td"] = env.step_and_maybe_reset(td)

    return timed(step, seconds, n)


def ppo_rate(
    df, n: int, seconds: float, hidden: tuple[int, ...] = (64, 64), device: str = "cpu", pin_memory: bool = True
) -> float:
    """PPO training frames/s on ``n`` envs (collection + GAE + updates) with an MLP of ``hidden``
    (``pin_memory``: a CUDA learner receives the env's outputs from pinned host memory)."""
    from src.resources import Compute

    steps = max(128, 2048 // n) if n < 1024 else 16
    cfg = OmegaConf.load(conf_dir() / "agent/ppo.yaml")
    cfg.frames_per_batch = n * steps
    cfg.minibatch_size = min(cfg.frames_per_batch, 1024 if device == "cpu" else 8192)
    batches = max(2, int(seconds * 15_000 // cfg.frames_per_batch))
    cfg.total_frames = cfg.frames_per_batch * batches
    cfg.progress = False
    cfg.hidden_sizes = list(hidden)
    market = VectorMarket(df, feature_names(), n, WINDOW, RULES, seed=0)
    env = TradingEnv(market, ActionSpace("discrete", False, 1.0))
    agent = PPOAgent(cfg, WINDOW, N_FEATURES, env.actions, env.action_spec, seed=0)
    start = time.perf_counter()
    agent.fit(
        env,
        lambda metrics, step: None,
        compute=Compute(torch.device(device), torch.get_num_threads(), pin_memory=pin_memory),
    )
    return cfg.total_frames / (time.perf_counter() - start)


def multi_agent_rate(df, markets: int, agents: int, seconds: float) -> float:
    """Agent-steps/s of the multi-agent kernel (impact on, in-kernel auto-reset)."""
    from src.envs.multi_market import Impact, MultiMarket

    market = MultiMarket(
        df, feature_names(), markets, agents, WINDOW, RULES, Impact(0.02, 0.01), seed=0, auto_reset=True
    )
    market.reset()
    targets = np.random.default_rng(0).choice([0.0, 1.0], size=(64, markets * agents))
    k = iter(range(10**12))
    return timed(lambda: market.step(targets[next(k) % 64]), seconds, markets * agents)


def python_rate(df, n: int, seconds: float) -> float:
    """The same fill/fee/reward/window logic as the kernel, as a plain Python loop over envs."""
    open_, close = df["$open"].to_numpy(), df["$close"].to_numpy()
    features = df[feature_names()].to_numpy(np.float32)
    rng = np.random.default_rng(0)
    t = list(rng.integers(WINDOW - 1, N_BARS - 1 - RULES.episode_length, n))
    cash, units, held, equity, steps = [1.0] * n, [0.0] * n, [0.0] * n, [1.0] * n, [0] * n
    obs = np.zeros((n, WINDOW, N_FEATURES), np.float32)
    targets = rng.choice([0.0, 1.0], size=(64, n)).tolist()
    fee, slip, k = RULES.transaction_fee, RULES.slippage_bps / 1e4, iter(range(10**12))

    def step():
        row = targets[next(k) % 64]
        for i in range(n):
            nxt = t[i] + 1
            before = equity[i]
            if row[i] != held[i]:
                traded = row[i] * (cash[i] + units[i] * open_[nxt]) / open_[nxt] - units[i]
                price = open_[nxt] * (1 + slip * np.sign(traded))
                cash[i] -= traded * price + abs(traded) * price * fee
                units[i] += traded
                held[i] = row[i]
            t[i], steps[i] = nxt, steps[i] + 1
            equity[i] = cash[i] + units[i] * close[nxt]
            _ = np.log(equity[i] / before)
            if steps[i] >= RULES.episode_length or nxt >= N_BARS - 1:
                t[i], cash[i], units[i], held[i], equity[i], steps[i] = WINDOW - 1, 1.0, 0.0, 0.0, 1.0, 0
            obs[i] = features[t[i] - WINDOW + 1 : t[i] + 1]

    return timed(step, seconds, n)


def gym_anytrading_rate(df, seconds: float) -> float:
    """Env-steps/s of gym-anytrading's ``StocksEnv`` (one env, plain Python, a (window, 2)
    observation of close and its change) over the same bars, random buy/sell actions."""
    from gym_anytrading.envs import StocksEnv

    prices = pd.DataFrame({"Close": df["$close"].to_numpy()})
    env = StocksEnv(df=prices, window_size=WINDOW, frame_bound=(WINDOW, N_BARS))
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 2, 64).tolist()
    k = iter(range(10**12))

    def step():
        _, _, terminated, truncated, _ = env.step(actions[next(k) % 64])
        if terminated or truncated:
            env.reset()

    return timed(step, seconds, 1)


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)


def run(seconds: float, thread_counts: list[int]) -> list[dict]:
    """The env suite's rows: measure, num_envs, threads, per_second, x_python_reference,
    x_gym_anytrading (env-steps per second / gym-anytrading's, both measured here)."""
    df = bench_frame()
    set_threads(1)
    peer = gym_anytrading_rate(df, seconds)
    rows: list[dict[str, Any]] = [
        {
            "measure": "gym-anytrading StocksEnv",
            "num_envs": 1,
            "threads": 1,
            "per_second": peer,
            "x_python_reference": None,
        }
    ]
    for n in ENV_COUNTS:
        set_threads(1)
        reference = python_rate(df, n, seconds)
        rows.append(
            {
                "measure": "python reference",
                "num_envs": n,
                "threads": 1,
                "per_second": reference,
                "x_python_reference": 1.0,
            }
        )
        for threads in thread_counts:
            set_threads(threads)
            for name, rate in [
                ("kernel", kernel_rate(df, n, seconds)),
                ("torchrl wrapped", wrapped_rate(df, n, seconds)),
                ("ppo training", ppo_rate(df, n, seconds)),
            ]:
                ratio = rate / reference if name != "ppo training" else None  # frames are not env-steps
                rows.append(
                    {
                        "measure": name,
                        "num_envs": n,
                        "threads": threads,
                        "per_second": rate,
                        "x_python_reference": ratio,
                    }
                )
    for row in rows:
        row["x_gym_anytrading"] = row["per_second"] / peer if row["measure"] != "ppo training" else None
    for markets, agents in MARKETS_X_AGENTS:  # agent-steps/s: one agent in one market for one bar
        for threads in thread_counts:
            set_threads(threads)
            rows.append(
                {
                    "measure": "multi-agent kernel",
                    "num_envs": markets,
                    "agents": agents,
                    "threads": threads,
                    "per_second": multi_agent_rate(df, markets, agents, seconds),
                    "x_python_reference": None,
                    "x_gym_anytrading": None,
                }
            )
    return rows


class GpuSampler:
    """NVML utilisation (percent) and memory used (GB) of GPU 0, sampled every 0.2 s in a thread."""

    def __init__(self):
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(0.2):
            use = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
            self.samples.append((float(use.gpu), memory.used / 1024**3))

    def __enter__(self) -> "GpuSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def summary(self) -> dict[str, float | None]:
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_util_max": None, "gpu_memory_gb_max": None}
        use, memory = np.array(self.samples).T
        return {
            "gpu_util_mean": float(use.mean()),
            "gpu_util_max": float(use.max()),
            "gpu_memory_gb_max": float(memory.max()),
        }


def ppo_suite(seconds: float, device: str, threads: int) -> list[dict]:
    """PPO frames/s with a 2 x 256 MLP for PPO_ENV_COUNTS envs on ``device``."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {device}: torch sees no CUDA GPU on this machine; no GPU figure can be measured here"
        )
    set_threads(threads)
    df = bench_frame()
    ppo_rate(df, 64, 0.0, (256, 256), device)  # warm-up, untimed: numba's compilation, the CUDA context
    rows = []
    cuda = device.startswith("cuda")
    for n in PPO_ENV_COUNTS:
        for pinned in (True, False) if cuda else (False,):
            gpu = GpuSampler() if cuda else None
            if gpu is not None:
                with gpu:
                    rate = ppo_rate(df, n, seconds, (256, 256), device, pinned)
            else:
                rate = ppo_rate(df, n, seconds, (256, 256), device, pinned)
            rows.append(
                {
                    "measure": "ppo training 2x256",
                    "num_envs": n,
                    "threads": threads,
                    "device": device,
                    "pinned": pinned,
                    "per_second": rate,
                    **(gpu.summary() if gpu is not None else {}),
                }
            )
    return rows


def ppo_table(rows: list[dict]) -> Table:
    out = Table(title="PPO training frames/s, 2 x 256 MLP", caption="GPU %: mean utilisation; max %: its peak")
    for column in ("device", "envs", "threads", "pinned", "frames/s", "GPU %", "max %", "GPU GB"):
        out.add_column(column, justify="left" if column == "device" else "right", no_wrap=True)

    def fmt(row: dict, key: str, spec: str) -> str:
        return "-" if row.get(key) is None else format(row[key], spec)

    for row in rows:
        out.add_row(
            row["device"],
            str(row["num_envs"]),
            str(row["threads"]),
            "yes" if row["pinned"] else "no",
            f"{row['per_second']:,.0f}",
            fmt(row, "gpu_util_mean", ".0f"),
            fmt(row, "gpu_util_max", ".0f"),
            fmt(row, "gpu_memory_gb_max", ".2f"),
        )
    return out


def features_suite(n_bars: int, cache_dir: Path, repeats: int) -> list[dict]:
    """Seconds for ta_full on ``n_bars`` bars: TA-Lib's own calls alone (the same functions and
    parameters on the same arrays), the whole pipeline (indicators, normalisation, warm-up cut,
    fill), the pipeline writing the cache, and loading from the cache (key and content hash
    checked). Each the best of ``repeats`` after an untimed warm-up (numba compilation); the
    cache is written anew before each write."""
    from hydra import compose, initialize_config_dir

    from src import registry
    from src.config_checks import plain_dict
    from src.data.synthetic import synthetic_ohlcv
    from src.features.talib_set import INPUTS, indicator

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["features=ta_full"]).features
    df = synthetic_ohlcv(n_bars, seed=0)
    fit_rows = int(n_bars * 0.7)
    arrays = {name: df[column].to_numpy(dtype=np.float64) for name, column in INPUTS.items()}
    entries = [plain_dict(entry) for entry in cfg.indicators]

    def talib_alone() -> int:
        return sum(
            len(indicator(arrays, e["fn"], {k: v for k, v in e.items() if k not in ("fn", "price_scale")}, False)[0])
            for e in entries
        )

    def pipeline(cache: str | None, fresh: bool):
        cfg.cache_dir = cache
        if fresh:
            shutil.rmtree(cache_dir, ignore_errors=True)
        return registry.build("features", cfg)(df, fit_rows=fit_rows)

    steps = [
        ("TA-Lib alone", lambda: talib_alone()),
        ("pipeline", lambda: pipeline(None, False)),
        ("pipeline + write cache", lambda: pipeline(str(cache_dir), True)),
        ("load from cache", lambda: pipeline(str(cache_dir), False)),
    ]
    registry.build("features", cfg)(df.iloc[:5000], fit_rows=3000)  # numba compilation, untimed
    rows = []
    for label, step in steps:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = step()
            times.append(time.perf_counter() - start)
        columns = out if isinstance(out, int) else out.shape[1]
        rows.append({"step": label, "bars": n_bars, "columns": columns, "seconds": min(times)})
    return rows


def paper_suite(n_bars: int) -> list[dict]:
    """Latency of replay paper sessions (see the module docstring)."""
    import tempfile

    from hydra import compose, initialize_config_dir

    from src import registry
    from src.agents.checkpoint import policy_contract
    from src.envs.torchrl_env import feature_columns
    from src.live.session import paper_trade
    from src.run import Market

    rows = []
    for agent_name in ("ppo", "buy_and_hold"):
        with (
            tempfile.TemporaryDirectory() as tmp,
            initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"),
        ):
            cfg = compose(
                "config",
                overrides=[
                    f"agent={agent_name}",
                    "mode=paper",
                    "paper.panel=false",
                    f"feed.max_bars={n_bars}",
                    f"paper.journal_dir={tmp}",
                    f"paper.session=bench-{agent_name}",
                ],
            )
            market = Market(cfg)
            train = market.train()
            env = registry.build("env", cfg.env, train, seed=cfg.seed, num_envs=1)
            contract = policy_contract(cfg, feature_columns(train), market.scaler)

            def factory(cfg=cfg, env=env):
                return registry.build("agent", cfg.agent, env, seed=cfg.seed), env.actions

            start = time.perf_counter()
            result = paper_trade(
                cfg, market.raw, market.bounds.test, factory, market.featurize, contract, None, Path(tmp) / "out"
            )
            session_seconds = time.perf_counter() - start
            test_df, _ = market.test(cfg.scenario)
            backtester = registry.build("backtest", cfg.backtest, cfg.env, env.actions)
            start = time.perf_counter()
            backtester.run(factory()[0], test_df.iloc[: n_bars + cfg.env.window_size])
            backtest_seconds = time.perf_counter() - start
        latency = result["latency_ms"]
        rows.append(
            {
                "agent": agent_name,
                "bars": result["bars"],
                "p50_ms": latency["p50"],
                "p99_ms": latency["p99"],
                "max_ms": latency["max"],
                "session_bars_per_second": result["bars"] / session_seconds,
                "backtest_bars_per_second": n_bars / backtest_seconds,
                "parity": result["parity"],
            }
        )
    return rows


def paper_table(rows: list[dict]) -> Table:
    out = Table(title="Paper session on replay: decision latency (bar arrival -> target)")
    for column in ("agent", "bars", "p50 ms", "p99 ms", "max ms", "session bars/s", "backtest bars/s", "parity"):
        out.add_column(column, justify="left" if column in ("agent", "parity") else "right")
    for row in rows:
        out.add_row(
            row["agent"],
            str(row["bars"]),
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            f"{row['max_ms']:.2f}",
            f"{row['session_bars_per_second']:,.0f}",
            f"{row['backtest_bars_per_second']:,.0f}",
            row["parity"],
        )
    return out


def features_table(rows: list[dict]) -> Table:
    out = Table(title="features=ta_full", caption="x TA-Lib: seconds / TA-Lib's own (best of the repeats)")
    for column in ("step", "bars", "columns", "seconds", "x TA-Lib"):
        out.add_column(column, justify="left" if column == "step" else "right", no_wrap=True)
    for row in rows:
        out.add_row(
            row["step"],
            f"{row['bars']:,}",
            str(row["columns"]),
            f"{row['seconds']:.2f}",
            f"{row['seconds'] / rows[0]['seconds']:.2f}",
        )
    return out


def table(rows: list[dict]) -> Table:
    out = Table(
        title=f"Env-steps (PPO: frames) per second, window {WINDOW} x {N_FEATURES}",
        caption="x python / x gym: ratio to the plain-Python reference at the same N / to gym-anytrading",
    )
    for column in ("measure", "envs", "threads", "per second", "x python", "x gym"):
        out.add_column(column, justify="left" if column == "measure" else "right")

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:,.2f}"

    for row in rows:
        envs = f"{row['num_envs']}x{row['agents']}" if "agents" in row else str(row["num_envs"])
        out.add_row(
            row["measure"],
            envs,
            str(row["threads"]),
            f"{row['per_second']:,.0f}",
            ratio(row["x_python_reference"]),
            ratio(row["x_gym_anytrading"]),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["env", "ppo", "grid", "features", "paper"], default="env")
    parser.add_argument(
        "--threads", default="1", help="env: comma-separated thread counts (e.g. 1,2); ppo: the first one"
    )
    parser.add_argument("--device", default="cpu", help="ppo: the learner's device (cpu, cuda)")
    parser.add_argument("--json", type=Path, default=None, help="default outputs/bench_<suite>.json")
    parser.add_argument("--seconds", type=float, default=1.5, help="env: time per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="grid, features: timed runs (the best counts)")
    parser.add_argument(
        "--bars", type=int, default=None, help="features: bars to compute (1,000,000); paper: bars to replay (1,000)"
    )
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    if args.suite == "env":
        rows = run(args.seconds, thread_counts)
        Console().print(table(rows))
        report = {"window": WINDOW, "features": N_FEATURES, "rows": rows}
    elif args.suite == "ppo":
        rows = ppo_suite(args.seconds, args.device, thread_counts[0])
        Console().print(ppo_table(rows))
        report = {"window": WINDOW, "features": N_FEATURES, "hidden": [256, 256], "rows": rows}
    elif args.suite == "grid":
        from src.bench_grid import grid_suite, grid_table

        rows = grid_suite(args.repeats)
        Console().print(grid_table(rows))
        report = {"rows": rows}
    elif args.suite == "paper":
        rows = paper_suite(args.bars or 1_000)
        Console().print(paper_table(rows))
        report = {"rows": rows}
    else:
        rows = features_suite(args.bars or 1_000_000, Path("outputs/bench_feature_cache"), args.repeats)
        Console().print(features_table(rows))
        report = {"rows": rows}
    path = args.json or Path(f"outputs/bench_{args.suite}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
