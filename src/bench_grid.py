"""``python -m src.bench --suite grid``: a strategy grid here and in two peer libraries.

The SMA crossover grid fast 5..50 (step 5) x slow 10..100 (step 10) on backtesting.py's GOOG
daily sample (2,148 bars), the 75 of its 100 combinations with fast < slow, each tool with its
usual call and every combination's metrics:

- rltrade: each combination's targets (``sma_cross.signals``), then ``Backtester.target_metrics``:
  every combination an env of one kernel call over all bars, under the default backtest's fee and
  slippage, and the full metrics of each;
- backtesting.py: ``Backtest.optimize`` (its default: one process per core), commission = the
  same fee + slippage;
- vectorbt: ``vbt.MA`` for both windows, crossings, ``Portfolio.from_signals`` over all 75
  columns and their Sharpe ratios (fees and slippage the same).

Each tool runs once untimed (imports, numba compilation) and then ``repeats`` times; the best time
counts. The tools' fill conventions differ (backtesting.py and rltrade fill at the next open,
vectorbt at the signal bar's close), so their best combinations may differ; the timings compare
the same work: 75 backtests with metrics.
"""

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from rich.table import Table

FAST, SLOW = range(5, 51, 5), range(10, 101, 10)
PAIRS = [(fast, slow) for fast in FAST for slow in SLOW if fast < slow]


def best_time(work: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(the shortest of ``repeats`` timed calls after one untimed call, the last result)."""
    result = work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return min(times), result


def goog() -> pd.DataFrame:
    from backtesting.test import GOOG

    return GOOG


def rltrade_grid(repeats: int) -> dict:
    from hydra import compose, initialize_config_dir

    from src import registry
    from src.backtest.sizing import with_risk_columns
    from src.bench import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["data=sample_goog_1d", "agent=sma_cross"])
    df = with_risk_columns(registry.build("data", cfg.data), cfg.backtest)  # the same GOOG bars
    env = registry.build("env", cfg.env, df, seed=0, num_envs=1)
    backtester = registry.build("backtest", cfg.backtest, cfg.env, env.actions)
    agents = [
        registry.build("agent", OmegaConf.create({"name": "sma_cross", "fast": f, "slow": s}), env, seed=0)
        for f, s in PAIRS
    ]

    def work():
        targets = np.column_stack([env.actions.to_targets(agent.signals(df)).reshape(-1) for agent in agents])
        return backtester.target_metrics(targets, df)

    seconds, metrics = best_time(work, repeats)
    best = int(np.argmax([m["sharpe"] for m in metrics]))
    return {"tool": "rltrade", "combos": len(PAIRS), "seconds": seconds, "best": PAIRS[best], "cost": cost(cfg)}


def cost(cfg) -> dict[str, float]:
    return {"fee": float(cfg.env.transaction_fee), "slippage": float(cfg.env.slippage_bps) / 1e4}


def backtesting_grid(repeats: int, fee: float, slippage: float) -> dict:
    import backtesting.backtesting
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover
    from backtesting.test import SMA

    class SmaCross(Strategy):
        fast, slow = 10, 20

        def init(self):
            self.fast_ma = self.I(SMA, self.data.Close, self.fast)
            self.slow_ma = self.I(SMA, self.data.Close, self.slow)

        def next(self):
            if crossover(self.fast_ma, self.slow_ma):
                self.buy()
            elif crossover(self.slow_ma, self.fast_ma):
                self.position.close()

    backtesting.backtesting._tqdm = lambda seq, **_: seq  # no progress bars (they cost it time)
    backtest = Backtest(goog(), SmaCross, cash=1_000_000, commission=fee + slippage, finalize_trades=True)

    def work():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return backtest.optimize(
                fast=FAST, slow=SLOW, constraint=lambda p: p.fast < p.slow, maximize="Sharpe Ratio"
            )

    seconds, stats = best_time(work, repeats)
    chosen = stats._strategy
    return {"tool": "backtesting.py", "combos": len(PAIRS), "seconds": seconds, "best": (chosen.fast, chosen.slow)}


def vectorbt_grid(repeats: int, fee: float, slippage: float) -> dict:
    import vectorbt as vbt

    close = goog()["Close"]

    def work():
        fast = vbt.MA.run(close, [f for f, _ in PAIRS]).ma.to_numpy()
        slow = vbt.MA.run(close, [s for _, s in PAIRS]).ma.to_numpy()
        above = fast > slow
        before = np.vstack([above[:1], above[:-1]])
        below_before = np.vstack([(fast < slow)[:1], (fast < slow)[:-1]])
        entries = pd.DataFrame(above & ~before, index=close.index)
        exits = pd.DataFrame((fast < slow) & ~below_before, index=close.index)
        portfolio = vbt.Portfolio.from_signals(close, entries, exits, fees=fee, slippage=slippage, freq="1D")
        return portfolio.sharpe_ratio().to_numpy()

    seconds, sharpe = best_time(work, repeats)
    return {"tool": "vectorbt", "combos": len(PAIRS), "seconds": seconds, "best": PAIRS[int(np.nanargmax(sharpe))]}


def grid_suite(repeats: int) -> list[dict]:
    """Rows {tool, combos, seconds, best, x_rltrade}: x_rltrade = the tool's seconds / rltrade's."""
    ours = rltrade_grid(repeats)
    fee, slippage = ours.pop("cost").values()
    rows = [ours, backtesting_grid(repeats, fee, slippage), vectorbt_grid(repeats, fee, slippage)]
    for row in rows:
        row["best"] = [int(value) for value in row["best"]]
        row["x_rltrade"] = row["seconds"] / ours["seconds"]
    return rows


def grid_table(rows: list[dict]) -> Table:
    out = Table(
        title=f"SMA grid on GOOG daily: {rows[0]['combos']} backtests with metrics",
        caption="x rltrade: the tool's time / rltrade's (best of the timed repeats)",
    )
    for column in ("tool", "combos", "seconds", "x rltrade", "best (fast, slow)"):
        out.add_column(column, justify="left" if column == "tool" else "right", no_wrap=True)
    for row in rows:
        out.add_row(
            row["tool"],
            str(row["combos"]),
            f"{row['seconds']:.4f}",
            f"{row['x_rltrade']:,.1f}",
            f"{tuple(row['best'])}",
        )
    return out
