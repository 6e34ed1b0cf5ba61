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

EXIT_REASONS = {
    kernels.STOP_EXIT: "stop_loss",
    kernels.TAKE_EXIT: "take_profit",
    kernels.TRAIL_EXIT: "trailing_stop",
    kernels.END_EXIT: "end_of_backtest",
}
ACCOUNT = ("t", "cash", "units", "requested", "equity")  # what closing a position reads and writes
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
        if hasattr(agent, "signals"):  # a rule on prices: its targets are known for every bar
            return self.run_targets(self.actions.to_targets(agent.signals(df)).reshape(-1, 1), df, close_at_end)[0]

        def decide(bar: int, market: VectorMarket) -> np.ndarray:
            observed = agent.act(torch.from_numpy(market.obs), torch.from_numpy(market.account))
            return self.actions.to_targets(torch.as_tensor(observed))

        return self._walk(df, 1, decide, close_at_end)[0]

    def run_targets(self, targets: np.ndarray, df: pd.DataFrame, close_at_end: bool = True) -> list[BacktestResult]:
        """Backtest N fixed target paths at once, one env each of one kernel call per bar:
        ``targets`` (len(df), N) float64 is each path's target decided at each bar's close
        (fractions of equity). Each result equals that path's own single backtest."""
        return self._walk(df, targets.shape[1], lambda bar, market: targets[bar], close_at_end)

    def _walk(self, df: pd.DataFrame, n: int, decide, close_at_end: bool) -> list[BacktestResult]:
        """Step ``n`` envs from bar ``window_size - 1`` to the end of ``df``; ``decide(bar,
        market)`` gives the (n,) targets at the close of ``bar``. An env that ends early (equity
        under the floor) keeps its series up to that bar."""
        window = self.env_cfg.window_size
        rules = replace(market_rules(self.env_cfg, self.cfg, df.index), episode_length=len(df), equity_floor=0.0)
        market = VectorMarket(df, feature_columns(df), n, window, rules)
        market.reset(start=window - 1)
        n_steps = len(df) - window
        equity, positions, financing = (np.zeros((n_steps + 1, n)) for _ in range(3))
        equity[0] = market.equity
        ends = np.full(n, n_steps)  # the last step of each env's series
        fills: list[list[tuple]] = [[] for _ in range(n)]
        ended: dict[int, list] = {}  # env -> its account at an early end
        for k in range(1, n_steps + 1):
            market.step(np.asarray(decide(window - 2 + k, market), dtype=np.float64))
            equity[k], positions[k] = market.equity, market.account[:, 0]
            financing[k] = market.fills[:, kernels.FINANCING]
            stamp = df.index[k + window - 1]
            for i in np.flatnonzero(market.fills[:, [kernels.ENTRY_UNITS, kernels.EXIT_UNITS]].any(axis=1)):
                if k <= ends[i]:
                    fills[i] += fill_rows(market.fills[i], stamp)
            finished = (market.terminated | market.truncated) & (ends == n_steps)
            ends[finished] = k
            for i in np.flatnonzero(finished & (k < n_steps)):
                ended[i] = [getattr(market, name)[i] for name in ACCOUNT]
            if (ends < n_steps).all():
                break
        if close_at_end:
            for i, values in ended.items():  # an env that ended early closes where it ended
                for name, value in zip(ACCOUNT, values):
                    getattr(market, name)[i] = value
            market.close_positions()
            for i in range(n):
                if market.fills[i, kernels.EXIT_UNITS] != 0.0:
                    fills[i] += fill_rows(market.fills[i], df.index[market.t[i]])
                equity[ends[i], i] = market.equity[i]
        return [
            self._result(
                df, equity[: ends[i] + 1, i], positions[: ends[i] + 1, i], financing[: ends[i] + 1, i], fills[i]
            )
            for i in range(n)
        ]

    def _result(self, df, equity, positions, financing, fills) -> BacktestResult:
        scale, window = self.cfg.initial_cash, self.env_cfg.window_size
        index = df.index[window - 1 : window - 1 + len(equity)]
        curve = pd.Series(equity * scale, index=index, name="equity")
        charged = pd.Series(financing * scale, index=index, name="financing")
        trades = pd.DataFrame(fills, columns=TRADE_COLUMNS)
        trades[["units", "fee"]] *= scale
        metrics = compute_metrics(
            curve, positions, trades, self.cfg.periods_per_year, self.cfg.risk_free_rate, charged.to_numpy()
        )
        return BacktestResult(curve, positions, charged, trades, metrics)


def fill_rows(row: np.ndarray, stamp: pd.Timestamp) -> list[tuple]:
    """This bar's executions (an order at the open, then perhaps a stop exit in the bar, or the
    closing trade at the end)."""
    out = []
    for units, price, fee, reason, partial in [
        (
            row[kernels.ENTRY_UNITS],
            row[kernels.ENTRY_PRICE],
            row[kernels.ENTRY_FEE],
            "signal",
            bool(row[kernels.PARTIAL]),
        ),
        (
            row[kernels.EXIT_UNITS],
            row[kernels.EXIT_PRICE],
            row[kernels.EXIT_FEE],
            EXIT_REASONS.get(int(row[kernels.EXIT_REASON]), ""),
            False,
        ),
    ]:
        if units != 0.0:
            out.append((stamp, "buy" if units > 0 else "sell", units, price, fee, reason, partial))
    return out


@register("backtest", "default")
def build_backtester(cfg, env_cfg, actions: ActionSpace) -> Backtester:
    return Backtester(cfg, env_cfg, actions)
