"""``VectorMarket``: the state arrays of N envs on one price series, stepped by the numba kernel.

Training (through the TorchRL wrapper) and the backtest both drive this class, so both see the
same fills, fees and slippage.
"""
import numpy as np
import pandas as pd

from src.envs import kernels


class VectorMarket:
    """N envs over ``df`` (OHLCV + feature columns). Feature columns are all but OHLCV.

    Arrays (all length N unless noted): ``t`` bar index of the latest close seen, ``cash``,
    ``units`` (base currency), ``held`` (target fraction held), ``equity``, ``steps``;
    ``obs`` (N, window, F) float32 and ``account`` (N, 2) float32 are the observation buffers.
    """

    def __init__(self, df: pd.DataFrame, feature_columns: list[str], num_envs: int, window_size: int,
                 transaction_fee: float, slippage_bps: float, episode_length: int,
                 equity_floor: float, seed: int = 0):
        if len(df) < window_size + 2:
            raise ValueError(f"{len(df)} bars cannot fill a window of {window_size} plus one step; "
                             "lower env.window_size or use more data")
        if transaction_fee < 0 or slippage_bps < 0:
            raise ValueError("env.transaction_fee and env.slippage_bps must be >= 0")
        self.index = df.index
        self.open = np.ascontiguousarray(df["$open"].to_numpy(dtype=np.float64))
        self.close = np.ascontiguousarray(df["$close"].to_numpy(dtype=np.float64))
        self.features = np.ascontiguousarray(df[feature_columns].to_numpy(dtype=np.float32))
        self.num_envs, self.window = num_envs, window_size
        self.transaction_fee, self.slippage = float(transaction_fee), slippage_bps / 1e4
        self.episode_length, self.equity_floor = int(episode_length), float(equity_floor)
        n = num_envs
        self.t = np.zeros(n, np.int64)
        self.steps = np.zeros(n, np.int64)
        self.starts = np.zeros(n, np.int64)
        self.cash, self.units, self.held, self.equity = (np.zeros(n) for _ in range(4))
        self.reward = np.zeros(n, np.float32)
        self.terminated = np.zeros(n, np.bool_)
        self.truncated = np.zeros(n, np.bool_)
        self.fill_price, self.traded_units, self.fee_paid = (np.zeros(n) for _ in range(3))
        self.obs = np.zeros((n, window_size, len(feature_columns)), np.float32)
        self.account = np.zeros((n, 2), np.float32)
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
            low = self.window - 1
            high = max(self.n_bars - 1 - self.episode_length, low + 1)
            kernels.sample_starts(self.rng_state, mask, low, high, self.starts)
        else:
            if not self.window - 1 <= start < self.n_bars - 1:
                raise ValueError(f"start bar {start} outside [{self.window - 1}, {self.n_bars - 1})")
            self.starts[mask] = start
        kernels.reset_envs(mask, self.starts, self.features, self.close, self.window, self.t,
                           self.cash, self.units, self.held, self.equity, self.steps, self.obs,
                           self.account)

    def step(self, targets: np.ndarray) -> None:
        """Move every env one bar towards ``targets`` (N,) float64, fractions of equity."""
        kernels.step_envs(targets, self.open, self.close, self.features, self.window,
                          self.transaction_fee, self.slippage, self.episode_length,
                          self.equity_floor, self.t, self.cash, self.units, self.held, self.equity,
                          self.steps, self.obs, self.account, self.reward, self.terminated,
                          self.truncated, self.fill_price, self.traded_units, self.fee_paid)
