"""Scenario injectors: pure functions that stress the test split's bars or its execution costs.

Every injector has the signature ``(df, execution, start) -> (df, execution)``: ``df`` is the full
OHLCV history, ``start`` the first bar it may change (the test split's first bar), ``execution``
the costs the backtest charges. Inputs are never modified; bars before ``start`` never change.
"""
from dataclasses import replace

import numpy as np
import pandas as pd

from src.backtest.engine import Execution
from src.registry import register

PRICES = ["$open", "$high", "$low", "$close"]


def no_stress(df: pd.DataFrame, execution: Execution, start: int):
    return df, execution


def flash_crash_multiplier(n_bars: int, at: int, drop: float, crash_bars: int, recovery: float,
                           recovery_bars: int) -> np.ndarray:
    """Per-bar price multiplier: 1 before ``at``; falls geometrically to ``1 - drop`` over
    ``crash_bars``; climbs back ``recovery`` of the loss over ``recovery_bars``; then stays."""
    bottom = 1.0 - drop
    settled = bottom + drop * recovery
    down = bottom ** (np.arange(1, crash_bars + 1) / crash_bars)
    up = bottom * (settled / bottom) ** (np.arange(1, recovery_bars + 1) / recovery_bars)
    path = np.r_[np.ones(at), down, up]
    path = np.r_[path, np.full(max(n_bars - len(path), 0), settled)]
    return path[:n_bars]


def flash_crash(df: pd.DataFrame, execution: Execution, start: int, *, drop: float,
                crash_bars: int, recovery: float, recovery_bars: int, at: float | None,
                volume_spike: float, seed: int):
    """Scale every price from the crash on (OHLC stay consistent: one positive factor per bar)."""
    if not 0.0 < drop < 1.0:
        raise ValueError(f"scenario.drop={drop} must be in (0, 1)")
    span = len(df) - start
    rng = np.random.default_rng(seed)
    offset = int(at * span) if at is not None else int(rng.integers(0, max(span - crash_bars, 1)))
    multiplier = flash_crash_multiplier(len(df), start + offset, drop, crash_bars, recovery,
                                        recovery_bars)
    out = df.copy()
    out[PRICES] = df[PRICES].to_numpy() * multiplier[:, None]
    stressed = slice(start + offset, start + offset + crash_bars + recovery_bars)
    out.iloc[stressed, out.columns.get_loc("$volume")] *= volume_spike
    return out, execution


def low_liquidity(df: pd.DataFrame, execution: Execution, start: int, *, volume_scale: float,
                  slippage_scale: float):
    """Thin the test split's volume and widen the slippage the backtest charges."""
    out = df.copy()
    out.iloc[start:, out.columns.get_loc("$volume")] *= volume_scale
    return out, replace(execution, slippage_bps=execution.slippage_bps * slippage_scale)


@register("scenario", "none")
def build_none(cfg):
    return no_stress


@register("scenario", "flash_crash")
def build_flash_crash(cfg):
    return lambda df, execution, start: flash_crash(
        df, execution, start, drop=cfg.drop, crash_bars=cfg.crash_bars, recovery=cfg.recovery,
        recovery_bars=cfg.recovery_bars, at=cfg.at, volume_spike=cfg.volume_spike, seed=cfg.seed)


@register("scenario", "low_liquidity")
def build_low_liquidity(cfg):
    return lambda df, execution, start: low_liquidity(
        df, execution, start, volume_scale=cfg.volume_scale, slippage_scale=cfg.slippage_scale)
