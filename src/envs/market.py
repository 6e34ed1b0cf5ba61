"""``VectorMarket``: the state arrays of N envs on one price series, stepped by the numba kernel.

Training (through the TorchRL wrapper) and the backtest both drive this class, so both see the
same fills, fees and slippage.
"""
from dataclasses import dataclass

import numpy as np
import pandas as pd

from src.envs import kernels

REWARDS = {"log_return": kernels.LOG_RETURN, "differential_sharpe": kernels.DIFFERENTIAL_SHARPE,
           "drawdown_penalty": kernels.DRAWDOWN_PENALTY}


@dataclass(frozen=True)
class MarketRules:
    """How the kernel trades and rewards (units in each field's comment)."""

    transaction_fee: float = 0.001    # fraction of traded notional
    slippage_bps: float = 0.0         # basis points against the trade
    episode_length: int = 512         # bars per episode
    equity_floor: float = 0.0         # fraction of starting equity that ends an episode
    rebalance_threshold: float = 0.0  # |target - held| at or below this trades nothing
    reward: str = "log_return"        # a key of REWARDS
    reward_param: float = 0.0         # EMA rate (differential_sharpe) or penalty (drawdown_penalty)

    def __post_init__(self):
        if self.transaction_fee < 0 or self.slippage_bps < 0:
            raise ValueError("env.transaction_fee and env.slippage_bps must be >= 0")
        if self.reward not in REWARDS:
            raise ValueError(f"env.reward={self.reward!r}; valid: {', '.join(REWARDS)}")


class VectorMarket:
    """N envs over ``df`` (OHLCV + the ``feature_columns`` the agent observes).

    Arrays (all length N unless noted): ``t`` bar index of the latest close seen, ``cash``,
    ``units`` (base currency), ``held`` (target fraction held), ``equity``, ``steps``, ``stats``
    (N, 3) reward statistics; ``obs`` (N, window, F) float32 and ``account`` (N, 2) float32 are the
    observation buffers, overwritten in place by every step.
    """

    def __init__(self, df: pd.DataFrame, feature_columns: list[str], num_envs: int,
                 window_size: int, rules: MarketRules, seed: int = 0, auto_reset: bool = False):
        if len(df) < window_size + 2:
            raise ValueError(f"{len(df)} bars cannot fill a window of {window_size} plus one step; "
                             "lower env.window_size or use more data")
        self.index = df.index
        self.open = np.ascontiguousarray(df["$open"].to_numpy(dtype=np.float64))
        self.close = np.ascontiguousarray(df["$close"].to_numpy(dtype=np.float64))
        self.features = np.ascontiguousarray(df[feature_columns].to_numpy(dtype=np.float32))
        self.num_envs, self.window, self.rules, self.auto_reset = num_envs, window_size, rules, auto_reset
        self.start_low = window_size - 1
        self.start_high = max(len(df) - 1 - rules.episode_length, self.start_low + 1)
        n = num_envs
        self.t, self.steps, self.starts = (np.zeros(n, np.int64) for _ in range(3))
        self.cash, self.units, self.held, self.equity = (np.zeros(n) for _ in range(4))
        self.stats = np.zeros((n, 3))
        self.reward = np.zeros(n, np.float32)
        self.terminated, self.truncated = np.zeros(n, np.bool_), np.zeros(n, np.bool_)
        self.fill_price, self.traded_units, self.fee_paid = (np.zeros(n) for _ in range(3))
        self.obs = np.zeros((n, window_size, len(feature_columns)), np.float32)
        self.account = np.zeros((n, 2), np.float32)
        self._flat_features = self.features.reshape(-1)  # views for the kernel's contiguous copy
        self._flat_obs = self.obs.reshape(n, -1)
        self.rng_state = np.zeros(n, np.uint64)
        self.seed(seed)

    @property
    def n_bars(self) -> int:
        return len(self.close)

    def seed(self, seed: int) -> None:
        """One independent generator per env, derived from ``seed``."""
        words = np.random.SeedSequence(seed).generate_state(self.num_envs, dtype=np.uint64)
        self.rng_state[:] = words | np.uint64(1)  # xorshift state must be non-zero

    def reset(self, mask: np.ndarray | None = None, start: int | None = None) -> None:
        """Reset envs in ``mask`` (all by default) at bar ``start``, or at seeded random bars."""
        mask = np.ones(self.num_envs, np.bool_) if mask is None else mask
        if start is None:
            kernels.sample_starts(self.rng_state, mask, self.start_low, self.start_high, self.starts)
        else:
            if not self.window - 1 <= start < self.n_bars - 1:
                raise ValueError(f"start bar {start} outside [{self.window - 1}, {self.n_bars - 1})")
            self.starts[mask] = start
        kernels.reset_envs(mask, self.starts, self._flat_features, self.close, self.window, self.t,
                           self.cash, self.units, self.held, self.equity, self.steps, self.stats,
                           self._flat_obs, self.account)

    def step(self, targets: np.ndarray) -> None:
        """Move every env one bar towards ``targets`` (N,) float64, fractions of equity."""
        rules = self.rules
        kernels.step_envs(
            targets, self.open, self.close, self._flat_features, self.window, rules.transaction_fee,
            rules.slippage_bps / 1e4, rules.episode_length, rules.equity_floor,
            rules.rebalance_threshold, REWARDS[rules.reward], rules.reward_param, self.auto_reset,
            self.rng_state, self.start_low, self.start_high, self.t, self.cash, self.units,
            self.held, self.equity, self.steps, self.stats, self._flat_obs, self.account, self.reward,
            self.terminated, self.truncated, self.fill_price, self.traded_units, self.fee_paid)
