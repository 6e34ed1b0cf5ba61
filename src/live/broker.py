"""``PaperBroker``: one env of the backtest's numba kernel, stepped as bars close.

The target decided at bar t's close is executed by ``kernels.step_envs`` on the two rows (t, t+1)
of the featurised frame when bar t+1 closes: next-open fill, fee, slippage and impact, sizing,
participation cap, stops, breaker and financing are the backtest's, computed by the same code.
The account state (cash, units, requested target, equity, risk and reward state) is a plain
dict for the journal, so a restarted session continues exactly where it stopped.
"""

from dataclasses import replace

import numpy as np

from src.envs import kernels
from src.envs.market import MarketRules, market_bars

STATE = ("cash", "units", "requested", "equity", "steps", "stats", "risk")


class PaperBroker:
    """Account units are per unit of starting equity (the kernel's); ``capital`` scales them."""

    def __init__(self, rules: MarketRules, capital: float):
        self.rules = replace(rules, episode_length=2**62, equity_floor=0.0)
        self._rules, self.capital = self.rules.vector(), capital
        self.cash, self.units = np.ones(1), np.zeros(1)
        self.requested, self.equity = np.zeros(1), np.ones(1)
        self.steps = np.zeros(1, np.int64)
        self.stats = np.array([[1.0, 0.0, 0.0]])
        self.risk = np.zeros((1, kernels.N_RISK))
        self.risk[0, kernels.BREAKER_PEAK] = 1.0
        self.account = np.zeros((1, 2), np.float32)  # (position fraction, log equity), as observed
        self.fills = np.zeros((1, kernels.FINANCING + 2))

    def step(self, target: float, rows) -> np.ndarray:
        """Execute ``target`` (decided at ``rows``' first bar) over its second bar; returns the
        kernel's fills row (quote units: x ``capital``)."""
        bars = market_bars(rows)
        features = np.zeros(2, np.float32)
        obs = np.zeros((1, 1), np.float32)
        t = np.zeros(1, np.int64)
        flags = np.zeros(1, np.bool_), np.zeros(1, np.bool_)
        kernels.step_envs(
            np.array([target]),
            bars,
            features,
            1,
            self._rules,
            False,
            np.ones(1, np.uint64),
            0,
            1,
            t,
            self.cash,
            self.units,
            self.requested,
            self.equity,
            self.steps,
            self.stats,
            self.risk,
            obs,
            self.account,
            np.zeros(1, np.float32),
            *flags,
            self.fills,
        )
        return self.fills[0].copy()

    def flatten(self, row) -> np.ndarray:
        """Close the position at ``row``'s close (one bar: the last known), charged like any
        exit; returns the fills row."""
        kernels.close_positions(
            market_bars(row),
            self._rules,
            np.zeros(1, np.int64),
            self.cash,
            self.units,
            self.requested,
            self.equity,
            self.fills,
        )
        self.account[0, 0] = 0.0
        return self.fills[0].copy()

    def state(self) -> dict:
        return {name: getattr(self, name).tolist() for name in STATE + ("account",)}

    def load(self, state: dict) -> None:
        for name in STATE + ("account",):
            getattr(self, name)[...] = np.asarray(state[name])

    def close(self) -> None:
        """Nothing held open: the paper broker is pure computation."""
