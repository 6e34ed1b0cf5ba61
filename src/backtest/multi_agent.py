"""Backtest of a multi-agent market: every agent (learners and fixed strategies) on one market
over a split, their net flow moving the price, with one row per agent and one for the market.

Per agent: the usual metrics (src/backtest/metrics.py) plus ``impact_paid`` (temporary impact
paid, negative when the agent traded against the net flow) and ``slippage_paid``, fractions of
the starting equity. Market: ``price_impact`` (log of the final price level the agents left,
i.e. the permanent impact), ``mean_abs_impact`` (mean |log level|), the annualised volatility of
the exogenous and the traded closes and ``volatility_added`` (their difference). Open positions
are closed at the last close with the fee and fixed slippage (no impact), as in single-agent
backtests.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from src import registry
from src.backtest.engine import TRADE_COLUMNS
from src.backtest.metrics import compute_metrics
from src.data.timeframes import periods_per_year
from src.envs import kernels
from src.envs.multi_market import FEE_PAID, IMPACT_PAID, SLIPPAGE_PAID

AGENT_COLUMNS = [
    ("total_return", "Return", "{:+.1%}"),
    ("sharpe", "Sharpe", "{:+.2f}"),
    ("sortino", "Sortino", "{:+.2f}"),
    ("max_drawdown", "MaxDD", "{:.1%}"),
    ("trades", "Trades", "{:.0f}"),
    ("turnover", "Turnover", "{:.0f}"),
    ("impact_paid", "Impact", "{:+.2%}"),
]


@dataclass
class MarketResult:
    """``agents``: {name: metrics}; ``market``: the market's figures; ``equity`` per agent and
    ``prices`` (exogenous and traded close) per bar."""

    agents: dict[str, dict[str, float]]
    market: dict[str, float]
    equity: pd.DataFrame
    prices: pd.DataFrame
    trades: pd.DataFrame

    @property
    def learners_mean(self) -> dict[str, float]:
        """Mean metrics over the learning agents (what model selection and sweeps see)."""
        learners = [m for m in self.agents.values() if m["learner"]]
        return {k: float(np.mean([m[k] for m in learners])) for k in learners[0]}


def backtest_market(cfg, df: pd.DataFrame, agent) -> MarketResult:
    """All agents of ``cfg.env`` on one market over ``df`` (first ``window_size - 1`` bars are
    history only); ``agent`` (mappo/ippo) acts for the learners."""
    env_cfg = OmegaConf.merge(cfg.env, {"episode_length": len(df), "equity_floor": 0.0})
    env = registry.build("env", env_cfg, df, seed=cfg.seed, num_envs=1)
    market, window = env.market, cfg.env.window_size
    market.reset(start=window - 1)
    n_steps, K = len(df) - window, market.K
    equity, positions = np.zeros((n_steps + 1, K)), np.zeros((n_steps + 1, K))
    paid, levels = np.zeros((K, 3)), np.ones(n_steps + 1)
    equity[0] = market.equity
    fills = []
    for k in range(1, n_steps + 1):
        observed = env.observation()
        actions = agent.act(observed["observation"], observed["account"])
        cash_before = market.cash.copy()
        market.step(env.targets(actions).numpy())
        stamp = df.index[market.t[0]]
        for j in np.flatnonzero(market.traded).tolist():
            x, fee = market.traded[j], market.paid[j, FEE_PAID]
            price = (cash_before[j] - market.cash[j] - fee) / x
            fills.append((env.names[j], stamp, "buy" if x > 0 else "sell", x, price, fee, "signal", False))
        paid += market.paid
        equity[k], positions[k], levels[k] = market.equity, market.account[:, 0], market.level[0]
    _close(market, fills, env.names, df.index[-1])
    equity[-1] = market.equity
    scale, periods = cfg.env.capital, periods_per_year(df.index)
    index = df.index[window - 1 :]
    trades = pd.DataFrame(fills, columns=["agent", *TRADE_COLUMNS])
    trades[["units", "fee"]] *= scale
    agents = {}
    for j, name in enumerate(env.names):
        curve = pd.Series(equity[:, j] * scale, index=index, name=name)
        mine = trades[trades["agent"] == name]
        metrics = compute_metrics(
            curve, positions[:, j], mine, cfg.backtest.periods_per_year, cfg.backtest.risk_free_rate
        )
        agents[name] = {
            **metrics,
            "impact_paid": paid[j, IMPACT_PAID],
            "slippage_paid": paid[j, SLIPPAGE_PAID],
            "learner": float(j in env.learners),
        }
    exogenous = df["$close"].to_numpy()[window - 1 :]
    traded_close = exogenous * levels
    prices = pd.DataFrame({"exogenous": exogenous, "traded": traded_close}, index=index)
    return MarketResult(
        agents,
        _market_figures(exogenous, traded_close, levels, periods),
        pd.DataFrame(equity * scale, index=index, columns=env.names),
        prices,
        trades,
    )


def _close(market, fills: list, names: list[str], stamp) -> None:
    """Close every open position at the last traded close, with the fee and fixed slippage."""
    rules = market._rules
    bar = market.bars[market.t[0]]
    close = bar[kernels.CLOSE] * market.level[0]
    for j in np.flatnonzero(market.units):
        x = -market.units[j]
        price = close * (1.0 + rules[kernels.SLIPPAGE] * bar[kernels.SLIPPAGE_SCALE] * np.sign(x))
        fee = abs(x) * price * rules[kernels.FEE] * bar[kernels.FEE_SCALE]
        market.cash[j] -= x * price + fee
        market.units[j] = 0.0
        market.equity[j] = market.cash[j]
        fills.append((names[j], stamp, "buy" if x > 0 else "sell", x, price, fee, "end_of_backtest", False))


def _market_figures(exogenous: np.ndarray, traded: np.ndarray, levels: np.ndarray, periods: float) -> dict[str, float]:
    def vol(closes):
        returns = np.diff(np.log(closes))
        return float(returns.std(ddof=1) * np.sqrt(periods)) if len(returns) > 1 else 0.0

    return {
        "price_impact": float(np.log(levels[-1])),
        "mean_abs_impact": float(np.abs(np.log(levels)).mean()),
        "volatility_exogenous": vol(exogenous),
        "volatility_market": vol(traded),
        "volatility_added": vol(traded) - vol(exogenous),
    }


class RandomLearners:
    """Every learner acts uniformly at random (the reference a trained policy must beat)."""

    name = "random"

    def __init__(self, actions, seed: int):
        self.actions, self.generator = actions, torch.Generator().manual_seed(seed)

    def act(self, observation: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        shape = observation.shape[:2]
        return self.actions.sample(shape.numel(), self.generator).reshape(shape)


def market_table(result: MarketResult, title: str) -> list[Table]:
    agents = Table(title=title, caption="* a learner; Impact: temporary impact paid (of capital)")
    agents.add_column("Agent", no_wrap=True)
    for _, header, _ in AGENT_COLUMNS:
        agents.add_column(header, justify="right", no_wrap=True)
    for name, m in result.agents.items():
        agents.add_row(name + ("*" if m["learner"] else ""), *(fmt.format(m[key]) for key, _, fmt in AGENT_COLUMNS))
    market = Table(
        title="Market: what the agents' flow did to the price",
        caption="Level: log price level left by permanent impact (end, mean |.|)",
    )
    for header in ("Level end", "Level mean", "Vol exogenous", "Vol traded", "Vol added"):
        market.add_column(header, justify="right", no_wrap=True)
    m = result.market
    market.add_row(
        f"{m['price_impact']:+.4f}",
        f"{m['mean_abs_impact']:.4f}",
        f"{m['volatility_exogenous']:.2%}",
        f"{m['volatility_market']:.2%}",
        f"{m['volatility_added']:+.2%}",
    )
    return [agents, market]


def print_market(result: MarketResult, title: str) -> None:
    console = Console()
    for table in market_table(result, title):
        console.print(table)
