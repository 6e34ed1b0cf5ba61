"""Out-of-sample backtest: one env of the training kernel walked bar by bar over a split."""

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from src.agents.base import Agent
from src.backtest.metrics import compute_metrics, curves_stats, stats_metrics
from src.data.timeframes import periods_per_year
from src.envs import kernels
from src.envs.actions import ActionSpace
from src.envs.market import VectorMarket, Walk
from src.envs.torchrl_env import feature_columns, market_rules
from src.registry import register

EXIT_REASONS = {
    kernels.STOP_EXIT: "stop_loss",
    kernels.TAKE_EXIT: "take_profit",
    kernels.TRAIL_EXIT: "trailing_stop",
    kernels.END_EXIT: "end_of_backtest",
}
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

        return self._walk(df, decide, close_at_end)

    def run_targets(self, targets: np.ndarray, df: pd.DataFrame, close_at_end: bool = True) -> list[BacktestResult]:
        """Backtest N fixed target paths at once, one env each, in one kernel call over every bar
        (``VectorMarket.walk``): ``targets`` (len(df), N) float64 is each path's target decided
        at each bar's close (fractions of equity). Each result equals that path's own backtest,
        and the bar-by-bar walk an agent acting on observations gets."""
        market, walk = self._walk_targets(targets, df)
        window = self.env_cfg.window_size
        fills: list[list[tuple]] = [[] for _ in range(market.num_envs)]
        for i in range(market.num_envs):
            for e, k in enumerate(walk.fill_steps[i, : walk.n_fills[i]].tolist()):
                fills[i] += fill_rows(walk.fills[i, e], df.index[k + window])
        return self._finish(df, market, walk.equity, walk.positions, walk.financing, fills, walk.ends, close_at_end)

    def target_metrics(self, targets: np.ndarray, df: pd.DataFrame) -> list[dict[str, float]]:
        """The metrics of ``run_targets(targets, df)`` (positions closed at the end), computed
        from the walk's arrays without building each path's series and trade table: what a
        parameter grid ranks its cells by."""
        market, walk = self._walk_targets(targets, df)
        _close_at_end(market, walk.equity, walk.ends)
        scale, window, n = self.cfg.initial_cash, self.env_cfg.window_size, market.num_envs
        traded, fees, n_trades = kernels.fill_totals(walk.fills, walk.n_fills, market.fills, scale)
        n_returns = walk.ends  # each curve has ends[i] + 1 values
        given_periods, risk_free_rate = self.cfg.periods_per_year, self.cfg.risk_free_rate
        periods_by_end: dict[int, float] = {}
        for end in np.unique(n_returns + 1).tolist():
            periods_by_end[end] = given_periods or periods_per_year(df.index[window - 1 : window - 1 + end])
        periods = np.array([periods_by_end[end] for end in (n_returns + 1).tolist()])
        stats = curves_stats(walk.equity, walk.positions, walk.ends, scale, risk_free_rate / periods)
        return [
            stats_metrics(
                stats[i],
                int(n_returns[i]),
                periods[i],
                traded[i],
                fees[i],
                int(n_trades[i]),
                float(walk.financing[i, : n_returns[i] + 1].sum() * scale),
            )
            for i in range(n)
        ]

    def _walk_targets(self, targets: np.ndarray, df: pd.DataFrame) -> tuple[VectorMarket, Walk]:
        """Every target path walked through ``df`` in one kernel call (see ``run_targets``)."""
        window = self.env_cfg.window_size
        market = self._market(df, targets.shape[1], observe=False)
        return market, market.walk(targets[window - 1 : len(df) - 1])

    def _market(self, df: pd.DataFrame, n: int, observe: bool) -> VectorMarket:
        """``n`` envs over ``df`` under the backtest's rules, at bar ``window_size - 1``; without
        ``observe`` they carry no feature window (fixed targets need none)."""
        window = self.env_cfg.window_size
        rules = replace(market_rules(self.env_cfg, self.cfg, df.index), episode_length=len(df), equity_floor=0.0)
        market = VectorMarket(df, feature_columns(df) if observe else [], n, window, rules)
        market.reset(start=window - 1)
        return market

    def _walk(self, df: pd.DataFrame, decide, close_at_end: bool) -> BacktestResult:
        """Step one env from bar ``window_size - 1`` to the end of ``df`` (or until its equity
        falls under the floor); ``decide(bar, market)`` gives its target at the close of ``bar``."""
        window = self.env_cfg.window_size
        market = self._market(df, 1, observe=True)
        n_steps = len(df) - window
        equity, positions, financing = (np.zeros((1, n_steps + 1)) for _ in range(3))  # env-major, as a walk
        equity[:, 0] = market.equity
        ends = np.full(1, n_steps)
        fills: list[tuple] = []
        for k in range(1, n_steps + 1):
            market.step(np.asarray(decide(window - 2 + k, market), dtype=np.float64))
            equity[:, k], positions[:, k] = market.equity, market.account[:, 0]
            financing[:, k] = market.fills[:, kernels.FINANCING]
            fills += fill_rows(market.fills[0], df.index[k + window - 1])
            if market.terminated[0] or market.truncated[0]:
                ends[0] = k
                break
        return self._finish(df, market, equity, positions, financing, [fills], ends, close_at_end)[0]

    def _finish(
        self, df, market, equity, positions, financing, fills, ends, close_at_end: bool
    ) -> list[BacktestResult]:
        """With ``close_at_end`` close what each env still holds at the close of its last bar (a
        trade with reason ``end_of_backtest``); then each env's result up to its last step."""
        if close_at_end:
            _close_at_end(market, equity, ends)
            for i in range(market.num_envs):
                if market.fills[i, kernels.EXIT_UNITS] != 0.0:
                    fills[i] += fill_rows(market.fills[i], df.index[market.t[i]])
        return [
            self._result(
                df, equity[i, : ends[i] + 1], positions[i, : ends[i] + 1], financing[i, : ends[i] + 1], fills[i]
            )
            for i in range(market.num_envs)
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


def _close_at_end(market: VectorMarket, equity: np.ndarray, ends: np.ndarray) -> None:
    """Close every env's position at the close of its last bar (``market.fills`` then holds the
    closing trades) and make that its last equity, ``equity[i, ends[i]]`` (env-major paths)."""
    market.close_positions()
    equity[np.arange(market.num_envs), ends] = market.equity


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
