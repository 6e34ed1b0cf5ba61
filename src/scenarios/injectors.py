"""Scenario injectors: small pure functions that stress a window of bars, seeded.

Signature: ``inject(df, start, cfg) -> (df, marks)``. ``df`` is the full bar history (OHLCV plus
optional per-bar cost multipliers ``@fee_scale`` / ``@slippage_scale``); only bars from row
``start`` on may change; ``marks`` lists the (first, last) timestamps of what was injected.
Inputs are never modified. Price injectors scale each bar's open/high/low/close by one positive
factor, so bars stay consistent; after the window, returns are those of the original bars.
"""
import numpy as np
import pandas as pd

from src.data.validate import OHLCV
from src.registry import register

PRICES = OHLCV[:4]
FEE_SCALE, SLIPPAGE_SCALE = "@fee_scale", "@slippage_scale"


def window(df: pd.DataFrame, start: int, cfg) -> tuple[int, int]:
    """[first, end) rows of the injected window: at ``cfg.at`` (fraction of the rows after
    ``start``) or at a seeded random row, ``cfg.bars`` long."""
    span = len(df) - start
    length = min(int(cfg["bars"]), span - 1)
    if cfg.get("at") is not None:
        first = start + int(cfg["at"] * span)
    else:
        first = start + int(np.random.default_rng(cfg["seed"]).integers(0, max(span - length, 1)))
    return first, min(first + length, len(df))


def scale_prices(df: pd.DataFrame, multiplier: np.ndarray) -> pd.DataFrame:
    out = df.copy()
    out[PRICES] = df[PRICES].to_numpy() * multiplier[:, None]
    return out


def return_multiplier(df: pd.DataFrame, first: int, end: int, transform) -> np.ndarray:
    """Per-bar price factor making close-to-close log returns in [first, end) ``transform(r)``."""
    log_returns = np.log(df["$close"]).diff().fillna(0.0).to_numpy()
    extra = np.zeros(len(df))
    extra[first:end] = transform(log_returns[first:end]) - log_returns[first:end]
    return np.exp(np.cumsum(extra))


def _marks(df: pd.DataFrame, first: int, end: int) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    return [(df.index[first], df.index[end - 1])]


@register("scenario", "none")
def none(df: pd.DataFrame, start: int, cfg):
    return df, []


@register("scenario", "flash_crash")
def flash_crash(df: pd.DataFrame, start: int, cfg):
    """Fall by ``drop`` over ``crash_bars``, recover ``recovery`` of the loss over
    ``recovery_bars``, volume x ``volume_spike`` meanwhile."""
    if not 0.0 < cfg.drop < 1.0:
        raise ValueError(f"scenario.flash_crash.drop={cfg.drop} must be in (0, 1)")
    first, end = window(df, start, {**cfg, "bars": cfg.crash_bars + cfg.recovery_bars})
    bottom, settled = 1.0 - cfg.drop, 1.0 - cfg.drop * (1.0 - cfg.recovery)
    down = bottom ** (np.arange(1, cfg.crash_bars + 1) / cfg.crash_bars)
    up = bottom * (settled / bottom) ** (np.arange(1, cfg.recovery_bars + 1) / cfg.recovery_bars)
    multiplier = np.ones(len(df))
    path = np.r_[down, up][: end - first]
    multiplier[first:end] = path
    multiplier[end:] = path[-1]
    out = scale_prices(df, multiplier)
    out.iloc[first:end, out.columns.get_loc("$volume")] *= cfg.volume_spike
    return out, _marks(df, first, end)


@register("scenario", "low_liquidity")
def low_liquidity(df: pd.DataFrame, start: int, cfg):
    """Volume x ``volume_scale`` and slippage x ``slippage_scale`` from ``start`` on."""
    out = df.copy()
    out.iloc[start:, out.columns.get_loc("$volume")] *= cfg.volume_scale
    scale = out[SLIPPAGE_SCALE].to_numpy().copy() if SLIPPAGE_SCALE in out else np.ones(len(out))
    scale[start:] *= cfg.slippage_scale
    out[SLIPPAGE_SCALE] = scale
    return out, _marks(df, start, len(df))


@register("scenario", "volatility_spike")
def volatility_spike(df: pd.DataFrame, start: int, cfg):
    """Close-to-close log returns x ``factor`` over the window."""
    first, end = window(df, start, cfg)
    return scale_prices(df, return_multiplier(df, first, end, lambda r: r * cfg.factor)), _marks(df, first, end)


@register("scenario", "trend_reversal")
def trend_reversal(df: pd.DataFrame, start: int, cfg):
    """Returns mirrored (r -> -r) over the window: the trend turns."""
    first, end = window(df, start, cfg)
    return scale_prices(df, return_multiplier(df, first, end, lambda r: -r)), _marks(df, first, end)


@register("scenario", "fee_spike")
def fee_spike(df: pd.DataFrame, start: int, cfg):
    """Transaction fees x ``factor`` over the window."""
    first, end = window(df, start, cfg)
    out = df.copy()
    scale = out[FEE_SCALE].to_numpy().copy() if FEE_SCALE in out else np.ones(len(out))
    scale[first:end] *= cfg.factor
    out[FEE_SCALE] = scale
    return out, _marks(df, first, end)


@register("scenario", "gap")
def gap(df: pd.DataFrame, start: int, cfg):
    """An exchange outage: the window's bars are missing. Orders wait for the first bar after it
    and fill at its open; no fill can happen at a time inside the gap."""
    first, end = window(df, start, cfg)
    return df.drop(df.index[first:end]), _marks(df, first, end)
