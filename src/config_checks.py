"""Range checks of the numeric settings, run before any work: each failure names the key, the
value and the valid range, and ``src.run`` prints it without a traceback.

``RANGES`` covers the ``env``, ``backtest``, ``split`` and ``resources`` groups; scenario
parameters are checked by ``src/scenarios/injectors.py: check_params`` with the same ``Range``.
"""

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf


class ConfigError(ValueError):
    """A setting outside its valid range, or of the wrong type; the message says which and why."""


@dataclass(frozen=True)
class Range:
    """Numbers in [low, high] (an open end excludes the bound); ``integer`` also needs a whole
    number."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below and (not self.integer or float(value).is_integer())

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        low = "(" if self.low_open else "["
        high = ")" if self.high_open else "]"
        fmt = lambda x: "inf" if math.isinf(x) else f"{x:g}"  # noqa: E731
        return f"{kind} in {low}{fmt(self.low)}, {fmt(self.high)}{high}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)  # [0, 1]
OPEN_FRACTION = Range(0, 1, high_open=True)  # [0, 1)
COUNT = Range(1, integer=True)  # 1, 2, ...
NON_NEGATIVE_COUNT = Range(0, integer=True)

RANGES: dict[str, Range] = {
    "env.num_envs": COUNT,
    "env.window_size": Range(2, integer=True),
    "env.episode_length": COUNT,
    "env.transaction_fee": Range(0, 1, high_open=True),
    "env.slippage_bps": Range(0, 1e4, high_open=True),
    "env.max_leverage": POSITIVE,
    "env.rebalance_threshold": NON_NEGATIVE,
    "env.reward_param": NON_NEGATIVE,
    "backtest.initial_cash": POSITIVE,
    "backtest.risk_free_rate": Range(-1, 1),
    "backtest.execution.impact": NON_NEGATIVE,
    "backtest.execution.max_participation": FRACTION,
    "backtest.sizing.fraction": POSITIVE,
    "backtest.sizing.target_vol": POSITIVE,
    "backtest.sizing.vol_window": Range(2, integer=True),
    "backtest.sizing.kelly_fraction": POSITIVE,
    "backtest.sizing.kelly_cap": POSITIVE,
    "backtest.stops.atr_period": COUNT,
    "backtest.stops.stop_loss": NON_NEGATIVE,
    "backtest.stops.take_profit": NON_NEGATIVE,
    "backtest.stops.trailing_stop": NON_NEGATIVE,
    "backtest.financing.borrow_rate": NON_NEGATIVE,
    "backtest.financing.funding_rate": NON_NEGATIVE,
    "backtest.breaker.drawdown_limit": OPEN_FRACTION,
    "backtest.breaker.pause_bars": NON_NEGATIVE_COUNT,
    "split.train": Range(0, 1, low_open=True, high_open=True),
    "split.validation": Range(0, 1, low_open=True, high_open=True),
    "resources.num_threads": COUNT,
    "resources.memory_limit_gb": POSITIVE,
    "resources.ray.num_workers": COUNT,
    "resources.ray.min_workers": COUNT,
    "resources.ray.max_workers": COUNT,
    "resources.ray.scale_threshold": POSITIVE,
    "resources.ray.scale_every": COUNT,
    "resources.ray.reprobe_every": NON_NEGATIVE_COUNT,
    "resources.ray.worker_memory_gb": POSITIVE,
    "agent.checkpoint_every": COUNT,
    "grid.top": COUNT,
    "seeds": COUNT,
    "walk_forward.folds": COUNT,
    "feed.speed": NON_NEGATIVE,
    "feed.max_bars": COUNT,
    "feed.duration": POSITIVE,
    "feed.stale_after": POSITIVE,
    "feed.reconnect_backoff": NON_NEGATIVE,
    "feed.max_reconnects": NON_NEGATIVE_COUNT,
    "paper.history_bars": COUNT,
}


def check_value(key: str, value: Any, valid: Range) -> None:
    """Raise ``ConfigError`` unless ``value`` is a number in ``valid`` (None = not set: fine)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r} has the wrong type; valid: {valid}")
    if not math.isfinite(value) or value not in valid:
        raise ConfigError(f"{key}={value} is out of range; valid: {valid}")


def check_ranges(cfg: Any) -> None:
    """Every key of ``RANGES`` that ``cfg`` holds is in its range."""
    for key, valid in RANGES.items():
        check_value(key, OmegaConf.select(cfg, key, default=None), valid)


def plain_dict(node: Any) -> dict[str, Any]:
    """A mapping config node as a plain dict with interpolations resolved ({} for None)."""
    if node is None:
        return {}
    out = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    if not isinstance(out, dict):
        raise ConfigError(f"expected a mapping of settings, got {type(out).__name__}: {out!r}")
    return {str(key): value for key, value in out.items()}
