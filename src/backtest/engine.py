"""Out-of-sample backtest: one env of the training kernel walked bar by bar over a split."""
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from src.agents.base import Agent
from src.backtest.metrics import compute_metrics
from src.envs import kernels
from src.envs.actions import ActionSpace
from src.envs.market import VectorMarket
from src.envs.torchrl_env import feature_columns, market_rules
from src.registry import register

EXIT_REASONS = {kernels.STOP_EXIT: "stop_loss", kernels.TAKE_EXIT: "take_profit",
                kernels.TRAIL_EXIT: "trailing_stop", kernels.END_EXIT: "end_of_backtest"}
TRADE_COLUMNS = ["timestamp", "side", "units", "price", "fee", "reason", "partial"]


@dataclass
class BacktestResult:
    """``equity`` (quote currency) and ``positions`` (fraction of equity) per bar, from the first
    decision bar's close; ``financing`` (quote currency) charged in each bar; ``trades`` one row
    per fill; ``metrics`` from ``compute_metrics``. A position still open after the last bar is
    closed at that bar's close, with its fee and slippage (a trade with reason
    ``end_of_backtest``), so the last equity is cash."""

    equity: pd.Series
    positions: np.ndarray
    financing: pd.Series
    trades: pd.DataFrame
    metrics: dict[str, float]


class Backtester:
    def __init__(self, cfg, env_cfg, actions: ActionSpace):
        self.cfg, self.env_cfg, self.actions = cfg, env_cfg, actions

    def run(self, agent: Agent, df: pd.DataFrame, close_at_end: bool = True) -> BacktestResult:
        """Walk ``agent`` over ``df``: its first ``window_size - 1`` bars are history only; the
        first decision is at the close of bar ``window_size - 1``, the first fill one bar later.
        ``close_at_end=False`` leaves the last position open (marked at the last close): the
        paper-trading parity check compares a session that goes on."""
        window = self.env_cfg.window_size
        rules = replace(market_rules(self.env_cfg, self.cfg, df.index), episode_length=len(df),
                        equity_floor=0.0)
        market = VectorMarket(df, feature_columns(df), 1, window, rules)
        market.reset(start=window - 1)
        market_obs, account_obs = torch.from_numpy(market.obs), torch.from_numpy(market.account)
        signals = agent.signals(df) if hasattr(agent, "signals") else None
        n_steps = len(df) - window
        equity, positions, financing = np.empty(n_steps + 1), np.empty(n_steps + 1), np.zeros(n_steps + 1)
        equity[0], positions[0] = market.equity[0], 0.0
        fills = []
        for k in range(1, n_steps + 1):
            bar = window - 2 + k  # the decision bar
            action = signals[bar : bar + 1] if signals is not None else agent.act(market_obs, account_obs)
            market.step(self.actions.to_targets(torch.as_tensor(action)))
            equity[k], positions[k] = market.equity[0], market.account[0, 0]
            financing[k] = market.fills[0, kernels.FINANCING]
            fills += fill_rows(market.fills[0], df.index[market.t[0]])
            if market.terminated[0] or market.truncated[0]:
                equity, positions, financing = equity[: k + 1], positions[: k + 1], financing[: k + 1]
                break
        if close_at_end:
            market.close_positions()
            fills += fill_rows(market.fills[0], df.index[market.t[0]])
            equity[-1] = market.equity[0]
        scale = self.cfg.initial_cash
        index = df.index[window - 1 : window - 1 + len(equity)]
        curve = pd.Series(equity * scale, index=index, name="equity")
        charged = pd.Series(financing * scale, index=index, name="financing")
        trades = pd.DataFrame(fills, columns=TRADE_COLUMNS)
        trades[["units", "fee"]] *= scale
        metrics = compute_metrics(curve, positions, trades, self.cfg.periods_per_year,
                                  self.cfg.risk_free_rate, charged.to_numpy())
        return BacktestResult(curve, positions, charged, trades, metrics)


def fill_rows(row: np.ndarray, stamp: pd.Timestamp) -> list[tuple]:
    """This bar's executions (an order at the open, then perhaps a stop exit in the bar, or the
    closing trade at the end)."""
    out = []
    for units, price, fee, reason, partial in [
        (row[kernels.ENTRY_UNITS], row[kernels.ENTRY_PRICE], row[kernels.ENTRY_FEE], "signal",
         bool(row[kernels.PARTIAL])),
        (row[kernels.EXIT_UNITS], row[kernels.EXIT_PRICE], row[kernels.EXIT_FEE],
         EXIT_REASONS.get(int(row[kernels.EXIT_REASON]), ""), False),
    ]:
        if units != 0.0:
            out.append((stamp, "buy" if units > 0 else "sell", units, price, fee, reason, partial))
    return out


@register("backtest", "default")
def build_backtester(cfg, env_cfg, actions: ActionSpace) -> Backtester:
    return Backtester(cfg, env_cfg, actions)
