"""``VectorMarket``: the state arrays of N envs on one price series, stepped by the numba kernel.

Training (through the TorchRL wrapper) and the backtest both drive this class with the same
``MarketRules``, so a policy is trained under the costs and risk rules it is judged by.
"""

from dataclasses import dataclass, fields

import numba
import numpy as np
import pandas as pd

from src.config_checks import ConfigError
from src.data.validate import OHLCV
from src.envs import kernels

REWARDS = {
    "log_return": kernels.LOG_RETURN,
    "differential_sharpe": kernels.DIFFERENTIAL_SHARPE,
    "drawdown_penalty": kernels.DRAWDOWN_PENALTY,
}
# per-bar inputs of the kernel, never observed: size multipliers of long and short targets, stop
# unit, fee and slippage multipliers
SIZE_COLUMN, SHORT_SIZE_COLUMN, STOP_UNIT_COLUMN, FEE_SCALE_COLUMN, SLIPPAGE_SCALE_COLUMN = (
    "@size",
    "@short_size",
    "@stop_unit",
    "@fee_scale",
    "@slippage_scale",
)
PARALLEL_MIN_ENVS = 16  # from this many envs a step is spread over numba's threads
REENTER = {"next_bar": kernels.REENTER_NEXT_BAR, "signal": kernels.REENTER_SIGNAL}


@dataclass(frozen=True)
class MarketRules:
    """How the kernel trades, charges and rewards (units in each field's comment)."""

    transaction_fee: float = 0.001  # fraction of traded notional
    slippage_bps: float = 0.0  # fixed, basis points against the trade
    impact: float = 0.0  # extra slippage fraction x sqrt(order units / last bar volume)
    max_participation: float = 0.0  # fill at most this fraction of the last closed bar's volume (0 = off)
    carry_unfilled: bool = True  # an unfilled remainder keeps trying next bar (else dropped)
    episode_length: int = 512  # bars per episode
    equity_floor: float = 0.0  # fraction of starting equity that ends an episode
    rebalance_threshold: float = 0.0  # |sized target - last requested| at or below this trades nothing
    reward: str = "log_return"  # a key of REWARDS
    reward_param: float = 0.0  # EMA rate (differential_sharpe) or penalty (drawdown_penalty)
    max_leverage: float = 1.0  # cap on |position| / equity after sizing
    stop_loss: float = 0.0  # exit when price moves this far against the entry (0 = off)
    take_profit: float = 0.0  # exit when price moves this far in favour (0 = off)
    trailing_stop: float = 0.0  # exit this far from the best price since entry (0 = off)
    borrow_per_bar: float = 0.0  # fraction of short notional charged each bar
    funding_per_bar: float = 0.0  # fraction of borrowed cash (negative cash) charged each bar
    drawdown_limit: float = 0.0  # flatten and pause beyond this drawdown from the peak (0 = off)
    pause_bars: int = 0  # bars the breaker keeps the account flat
    capital: float = 1.0  # quote currency per unit of account equity (volume checks)
    reenter: str = "next_bar"  # after a stop: next_bar | signal (see src/envs/kernels.py)

    def __post_init__(self):
        if self.reward not in REWARDS:
            raise ConfigError(f"env.reward={self.reward!r}; valid: {', '.join(REWARDS)}")
        if self.reenter not in REENTER:
            raise ConfigError(f"backtest.stops.reenter={self.reenter!r}; valid: {', '.join(REENTER)}")

    def vector(self) -> np.ndarray:
        """The rules in the kernel's order (src/envs/kernels.py: FEE ... PAUSE_BARS)."""
        values = [
            self.transaction_fee,
            self.slippage_bps / 1e4,
            self.impact,
            self.max_participation,
            float(self.carry_unfilled),
            self.episode_length,
            self.equity_floor,
            self.rebalance_threshold,
            REWARDS[self.reward],
            self.reward_param,
            self.max_leverage,
            self.stop_loss,
            self.take_profit,
            self.trailing_stop,
            self.borrow_per_bar,
            self.funding_per_bar,
            self.drawdown_limit,
            self.pause_bars,
            self.capital,
            REENTER[self.reenter],
        ]
        if not len(values) == kernels.N_RULES == len(fields(self)):
            raise RuntimeError("MarketRules and src/envs/kernels.py disagree on the rules vector")
        return np.asarray(values, dtype=np.float64)


def market_bars(df: pd.DataFrame) -> np.ndarray:
    """(T, 10) float64: open, high, low, close, volume, then the @-columns above (default 1;
    ``@short_size`` defaults to ``@size``)."""

    def column(name: str, default: np.ndarray) -> np.ndarray:
        return df[name].to_numpy(np.float64) if name in df else default

    ones = np.ones(len(df))
    size = column(SIZE_COLUMN, ones)
    columns = [df[c].to_numpy(np.float64) for c in OHLCV]
    columns += [
        size,
        column(SHORT_SIZE_COLUMN, size),
        column(STOP_UNIT_COLUMN, ones),
        column(FEE_SCALE_COLUMN, ones),
        column(SLIPPAGE_SCALE_COLUMN, ones),
    ]
    return np.ascontiguousarray(np.stack(columns, axis=1))


@dataclass
class Walk:
    """N envs' paths from one ``VectorMarket.walk`` of S steps, env-major (each env's path
    contiguous): ``equity`` (per unit of initial cash), ``positions`` (fractions of equity) and
    ``financing`` charged (N, S+1), column 0 the state before the walk; the executions ``fills``
    (N, S, 9; ``kernels`` columns), the e-th of env i at step ``fill_steps[i, e]`` (0-based) for
    e < ``n_fills[i]``; ``ends`` (N,) each env's last step."""

    equity: np.ndarray
    positions: np.ndarray
    financing: np.ndarray
    fills: np.ndarray
    fill_steps: np.ndarray
    n_fills: np.ndarray
    ends: np.ndarray


class EvolvingArrays:
    """``state()`` / ``load_state()`` over the array attributes a market's kernel evolves, named in
    ``STATE`` (a training checkpoint's env state)."""

    STATE: tuple[str, ...] = ()

    def state(self) -> dict[str, np.ndarray]:
        """Copies of every array that evolves."""
        return {name: getattr(self, name).copy() for name in self.STATE}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Continue from ``state`` (from ``state()`` of a market with the same shapes), in place."""
        for name in self.STATE:
            getattr(self, name)[...] = state[name]


class VectorMarket(EvolvingArrays):
    """N envs over ``df`` (OHLCV + the ``feature_columns`` the agent observes).

    Arrays (all length N unless noted): ``t`` bar index of the latest close seen, ``cash``,
    ``units`` (base currency), ``requested`` (the last requested sized target, a fraction of
    equity), ``equity``, ``steps``, ``stats`` (N, 3) reward statistics, ``risk`` (N, 8) stop and
    breaker state, ``fills`` (N, 9) this
    step's executions; ``obs`` (N, window, F) float32 and ``account`` (N, 2) float32 are the
    observation buffers, overwritten in place by every step.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        feature_columns: list[str],
        num_envs: int,
        window_size: int,
        rules: MarketRules,
        seed: int = 0,
        auto_reset: bool = False,
    ):
        if len(df) < window_size + 2:
            raise ValueError(
                f"{len(df)} bars cannot fill a window of {window_size} plus one step; "
                "lower env.window_size or use more data"
            )
        self.index = df.index
        self.bars = market_bars(df)
        self.features = np.ascontiguousarray(df[feature_columns].to_numpy(dtype=np.float32))
        self.num_envs, self.window, self.auto_reset = num_envs, window_size, auto_reset
        self.rules, self._rules = rules, rules.vector()
        self.start_low = window_size - 1
        self.start_high = max(len(df) - 1 - rules.episode_length, self.start_low + 1)
        n = num_envs
        self.t, self.steps, self.starts = (np.zeros(n, np.int64) for _ in range(3))
        self.cash, self.units, self.requested, self.equity = (np.zeros(n) for _ in range(4))
        self.stats, self.fills = np.zeros((n, 3)), np.zeros((n, 9))
        self.risk = np.zeros((n, kernels.N_RISK))
        self.reward = np.zeros(n, np.float32)
        self.terminated, self.truncated = np.zeros(n, np.bool_), np.zeros(n, np.bool_)
        self.obs = kernels.stream_buffer((n, window_size, len(feature_columns)))
        self.account = np.zeros((n, 2), np.float32)
        self._flat_features = self.features.reshape(-1)  # views for the kernel's contiguous copy
        self._flat_obs = self.obs.reshape(n, -1)
        self.rng_state = np.zeros(n, np.uint64)
        self.seed(seed)

    def use_output_buffers(self, **buffers: np.ndarray) -> None:
        """Write the outputs named in ``buffers`` into these arrays from now on instead of the
        current ones (a TorchRL env hands each step's arrays out instead of copying them):
        ``obs`` (N, window, F) and ``account`` (N, 2) float32, ``reward`` float32,
        ``terminated`` and ``truncated`` bool (N entries in any shape)."""
        for name, array in buffers.items():
            if name == "obs":
                self.obs, self._flat_obs = array, array.reshape(self.num_envs, -1)
            elif name == "account":
                self.account = array
            elif name in ("reward", "terminated", "truncated"):
                setattr(self, name, array.reshape(self.num_envs))
            else:
                raise ValueError(f"{name!r} is not an output of VectorMarket")

    @property
    def n_bars(self) -> int:
        return len(self.bars)

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
        kernels.reset_envs(
            mask,
            self.starts,
            self.bars,
            self._flat_features,
            self.window,
            self.t,
            self.cash,
            self.units,
            self.requested,
            self.equity,
            self.steps,
            self.stats,
            self.risk,
            self._flat_obs,
            self.account,
        )

    def step(self, targets: np.ndarray) -> int:
        """Move every env one bar towards ``targets`` (N,) float64, fractions of equity; returns
        how many envs finished (terminated or truncated) in this step."""
        if self.num_envs < PARALLEL_MIN_ENVS:
            return int(kernels.step_envs(targets, *self._kernel_args(self.auto_reset)))
        blocks = numba.get_num_threads()  # one block of envs per thread
        return int(kernels.step_envs_parallel(*(targets, *self._kernel_args(self.auto_reset), blocks)))

    def _kernel_args(self, auto_reset: bool) -> tuple:
        """The market's data, rules and state in the order the step kernels take them (after the
        targets)."""
        return (
            self.bars,
            self._flat_features,
            self.window,
            self._rules,
            auto_reset,
            self.rng_state,
            self.start_low,
            self.start_high,
            self.t,
            self.cash,
            self.units,
            self.requested,
            self.equity,
            self.steps,
            self.stats,
            self.risk,
            self._flat_obs,
            self.account,
            self.reward,
            self.terminated,
            self.truncated,
            self.fills,
        )

    STATE = (
        "t",
        "steps",
        "starts",
        "cash",
        "units",
        "requested",
        "equity",
        "stats",
        "fills",
        "risk",
        "reward",
        "terminated",
        "truncated",
        "obs",
        "account",
        "rng_state",
    )

    def walk(self, targets: np.ndarray) -> "Walk":
        """Step every env through its own target path ``targets`` (S, N) float64 in one kernel
        call (``kernels.walk_targets``); returns the paths (see ``Walk``)."""
        n, n_steps = self.num_envs, targets.shape[0]
        walk = Walk(
            equity=np.zeros((n, n_steps + 1)),
            positions=np.zeros((n, n_steps + 1)),
            financing=np.zeros((n, n_steps + 1)),
            fills=np.empty((n, n_steps, self.fills.shape[1])),  # rows written only at executions
            fill_steps=np.empty((n, n_steps), np.int64),
            n_fills=np.zeros(n, np.int64),
            ends=np.full(n, n_steps),
        )
        walk.equity[:, 0] = self.equity
        paths = (walk.equity, walk.positions, walk.financing, walk.fills, walk.fill_steps, walk.n_fills, walk.ends)
        walked = np.ascontiguousarray(targets.T, dtype=np.float64)  # env-major
        kernels.walk_targets(*(walked, *self._kernel_args(False), *paths))
        return walk

    def close_positions(self) -> None:
        """Close every open position at its current bar's close, charged like any exit (the end
        of a backtest); ``fills`` then holds the closing trades."""
        kernels.close_positions(
            self.bars, self._rules, self.t, self.cash, self.units, self.requested, self.equity, self.fills
        )
