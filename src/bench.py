"""Speed benchmark: ``python -m src.bench [--suite env|features|paper] [--json PATH] [--seconds S]``.

Suite ``paper``: a replay paper session (``mode=paper feed=replay``) of ``--bars`` bars of the
default synthetic market's test split, for the default MLP PPO policy and buy-and-hold: decision
latency p50/p99/max (bar arrival -> target decided: features on the bars so far, policy, journal
excluded) and bars per second, against the batch backtest of the same bars in the same process.

Suite ``features``: seconds to compute ``features=ta_full`` on ``--bars`` synthetic bars
(default 1,000,000), to compute and write it to the feature cache, and to load it back.

Suite ``env`` (default):
Measures, for N in {1, 64, 1024} parallel envs with a 32 x 16 observation window, on one thread:
- kernel: env-steps/s of the numba kernel alone (in-kernel auto-reset);
- wrapped: env-steps/s through the TorchRL ``TradingEnv`` (``step_and_maybe_reset``);
- ppo: training frames/s of PPO end to end (collection + GAE + updates), 2 x 64 MLP;
- python: a plain-Python reference of the same step (a loop over envs), run in the same process,
  which every other figure is quoted against.
"""
import argparse
import json
import shutil
import time
from pathlib import Path

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
ENV_COUNTS = (1, 64, 1024)
RULES = MarketRules(transaction_fee=0.001, slippage_bps=1.0, episode_length=512)


def bench_frame(seed: int = 0) -> pd.DataFrame:
    """Random-walk OHLC with 16 random feature columns (the kernel's speed ignores their values)."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, N_BARS)))
    columns = {"$open": close, "$high": close, "$low": close, "$close": close,
               "$volume": np.ones(N_BARS)}
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


def ppo_rate(df, n: int, seconds: float) -> float:
    steps = max(128, 2048 // n) if n < 1024 else 16
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/agent/ppo.yaml")
    cfg.frames_per_batch = n * steps
    cfg.minibatch_size = min(cfg.frames_per_batch, 1024)
    batches = max(2, int(seconds * 15_000 // cfg.frames_per_batch))
    cfg.total_frames = cfg.frames_per_batch * batches
    cfg.progress = False
    market = VectorMarket(df, feature_names(), n, WINDOW, RULES, seed=0)
    env = TradingEnv(market, ActionSpace("discrete", False, 1.0))
    agent = PPOAgent(cfg, WINDOW, N_FEATURES, env.actions, env.action_spec, seed=0)
    start = time.perf_counter()
    agent.fit(env, lambda metrics, step: None)
    return cfg.total_frames / (time.perf_counter() - start)


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


def run(seconds: float) -> list[dict]:
    torch.set_num_threads(1)
    df = bench_frame()
    rows = []
    for n in ENV_COUNTS:
        reference = python_rate(df, n, seconds)
        for name, rate in [("python reference", reference), ("kernel", kernel_rate(df, n, seconds)),
                           ("torchrl wrapped", wrapped_rate(df, n, seconds)),
                           ("ppo training", ppo_rate(df, n, seconds))]:
            ratio = rate / reference if name != "ppo training" else None  # frames are not env-steps
            rows.append({"measure": name, "num_envs": n, "per_second": rate,
                         "x_python_reference": ratio})
    return rows


def features_suite(n_bars: int, cache_dir: Path) -> list[dict]:
    """Seconds for ta_full on ``n_bars`` bars: compute only; compute + cache write; cache load."""
    from hydra import compose, initialize_config_dir

    from src import registry
    from src.data.synthetic import synthetic_ohlcv

    conf_dir = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose("config", overrides=["features=ta_full"]).features
    df = synthetic_ohlcv(n_bars, seed=0)
    shutil.rmtree(cache_dir, ignore_errors=True)
    rows = []
    for label, cache in [("compute", None), ("compute + write cache", str(cache_dir)),
                         ("load from cache", str(cache_dir))]:
        cfg.cache_dir = cache
        featurize = registry.build("features", cfg)
        start = time.perf_counter()
        out = featurize(df, fit_rows=int(n_bars * 0.7))
        rows.append({"step": label, "bars": n_bars, "columns": out.shape[1],
                     "seconds": time.perf_counter() - start})
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

    conf_dir = Path(__file__).resolve().parents[1] / "conf"
    rows = []
    for agent_name in ("ppo", "buy_and_hold"):
        with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose("config", overrides=[f"agent={agent_name}", "mode=paper", "paper.panel=false",
                                               f"feed.max_bars={n_bars}", f"paper.journal_dir={tmp}",
                                               f"paper.session=bench-{agent_name}"])
            market = Market(cfg)
            train = market.train()
            env = registry.build("env", cfg.env, train, seed=cfg.seed, num_envs=1)
            contract = policy_contract(cfg, feature_columns(train), market.scaler)

            def factory():
                return registry.build("agent", cfg.agent, env, seed=cfg.seed), env.actions

            start = time.perf_counter()
            result = paper_trade(cfg, market.raw, market.bounds.test, factory, market.featurize,
                                 contract, None, Path(tmp) / "out")
            session_seconds = time.perf_counter() - start
            test_df, _ = market.test(cfg.scenario)
            backtester = registry.build("backtest", cfg.backtest, cfg.env, env.actions)
            start = time.perf_counter()
            backtester.run(factory()[0], test_df.iloc[: n_bars + cfg.env.window_size])
            backtest_seconds = time.perf_counter() - start
        latency = result["latency_ms"]
        rows.append({"agent": agent_name, "bars": result["bars"], "p50_ms": latency["p50"],
                     "p99_ms": latency["p99"], "max_ms": latency["max"],
                     "session_bars_per_second": result["bars"] / session_seconds,
                     "backtest_bars_per_second": n_bars / backtest_seconds,
                     "parity": result["parity"]})
    return rows


def paper_table(rows: list[dict]) -> Table:
    out = Table(title="Paper session on replay: decision latency (bar arrival -> target)")
    for column in ("agent", "bars", "p50 ms", "p99 ms", "max ms", "session bars/s",
                   "backtest bars/s", "parity"):
        out.add_column(column, justify="left" if column in ("agent", "parity") else "right")
    for row in rows:
        out.add_row(row["agent"], str(row["bars"]), f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}",
                    f"{row['max_ms']:.2f}", f"{row['session_bars_per_second']:,.0f}",
                    f"{row['backtest_bars_per_second']:,.0f}", row["parity"])
    return out


def features_table(rows: list[dict]) -> Table:
    out = Table(title="features=ta_full")
    for column in ("step", "bars", "columns", "seconds", "x compute"):
        out.add_column(column, justify="left" if column == "step" else "right")
    for row in rows:
        out.add_row(row["step"], f"{row['bars']:,}", str(row["columns"]), f"{row['seconds']:.2f}",
                    f"{row['seconds'] / rows[0]['seconds']:.2f}")
    return out


def table(rows: list[dict]) -> Table:
    out = Table(title=f"Env-steps (PPO: frames) per second, window {WINDOW} x {N_FEATURES}, 1 thread")
    for column in ("measure", "num_envs", "per second", "x python reference"):
        out.add_column(column, justify="left" if column == "measure" else "right")
    for row in rows:
        ratio = row["x_python_reference"]
        out.add_row(row["measure"], str(row["num_envs"]), f"{row['per_second']:,.0f}",
                    "-" if ratio is None else f"{ratio:,.1f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["env", "features", "paper"], default="env")
    parser.add_argument("--json", type=Path, default=None, help="default outputs/bench_<suite>.json")
    parser.add_argument("--seconds", type=float, default=1.5, help="env: time per measurement")
    parser.add_argument("--bars", type=int, default=None,
                        help="features: bars to compute (1,000,000); paper: bars to replay (1,000)")
    args = parser.parse_args()
    if args.suite == "env":
        rows = run(args.seconds)
        Console().print(table(rows))
        report = {"window": WINDOW, "features": N_FEATURES, "rows": rows}
    elif args.suite == "paper":
        rows = paper_suite(args.bars or 1_000)
        Console().print(paper_table(rows))
        report = {"rows": rows}
    else:
        rows = features_suite(args.bars or 1_000_000, Path("outputs/bench_feature_cache"))
        Console().print(features_table(rows))
        report = {"rows": rows}
    path = args.json or Path(f"outputs/bench_{args.suite}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
