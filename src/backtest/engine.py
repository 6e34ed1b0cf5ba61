"""Out-of-sample backtest: one env of the training kernel walked bar by bar over the test split."""
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from src.agents.base import Agent
from src.backtest.metrics import compute_metrics
from src.envs.actions import ActionSpace
from src.envs.market import VectorMarket
from src.envs.torchrl_env import feature_columns, market_rules
from src.registry import register


@dataclass
class BacktestResult:
    """``equity`` (quote currency) and ``positions`` (fraction of equity) per bar, from the first
    decision bar's close; ``trades`` one row per fill; ``metrics`` from ``compute_metrics``."""

    equity: pd.Series
    positions: np.ndarray
    trades: pd.DataFrame
    metrics: dict[str, float]


@dataclass
class Execution:
    """Costs the backtest charges (a scenario may raise them)."""

    transaction_fee: float
    slippage_bps: float


class Backtester:
    def __init__(self, cfg, env_cfg, actions: ActionSpace):
        self.cfg, self.env_cfg, self.actions = cfg, env_cfg, actions

    def run(self, agent: Agent, df: pd.DataFrame, execution: Execution) -> BacktestResult:
        """Walk ``agent`` over ``df``: its first ``window_size - 1`` bars are history only; the
        first decision is at the close of bar ``window_size - 1``, the first fill one bar later."""
        window = self.env_cfg.window_size
        rules = replace(market_rules(self.env_cfg), transaction_fee=execution.transaction_fee,
                        slippage_bps=execution.slippage_bps, episode_length=len(df),
                        equity_floor=0.0)
        market = VectorMarket(df, feature_columns(df), 1, window, rules)
        market.reset(start=window - 1)
        market_obs, account_obs = torch.from_numpy(market.obs), torch.from_numpy(market.account)
        n_steps = len(df) - window
        equity, positions = np.empty(n_steps + 1), np.empty(n_steps + 1)
        equity[0], positions[0] = market.equity[0], 0.0
        fills = []
        for k in range(1, n_steps + 1):
            action = agent.act(market_obs, account_obs)
            market.step(self.actions.to_targets(action))
            equity[k], positions[k] = market.equity[0], market.account[0, 0]
            if market.traded_units[0] != 0.0:
                fills.append((df.index[market.t[0]], market.traded_units[0], market.fill_price[0],
                              market.fee_paid[0]))
            if market.terminated[0] or market.truncated[0]:
                equity, positions = equity[: k + 1], positions[: k + 1]
                break
        scale = self.cfg.initial_cash
        curve = pd.Series(equity * scale, index=df.index[window - 1 : window - 1 + len(equity)],
                          name="equity")
        trades = pd.DataFrame(fills, columns=["timestamp", "units", "price", "fee"])
        trades[["units", "fee"]] *= scale
        trades.insert(1, "side", np.where(trades["units"] > 0, "buy", "sell"))
        metrics = compute_metrics(curve, positions, len(trades), self.cfg.periods_per_year,
                                  self.cfg.risk_free_rate)
        return BacktestResult(curve, positions, trades, metrics)


@register("backtest", "default")
def build_backtester(cfg, env_cfg, actions: ActionSpace) -> Backtester:
    return Backtester(cfg, env_cfg, actions)
