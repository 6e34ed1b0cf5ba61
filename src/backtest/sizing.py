"""Per-bar risk inputs from past bars only: the position-size multipliers and the stop unit.

Sizing (``backtest.sizing.method``): multipliers on the agent's target decided at bar t, one for
long targets (``@size``) and one for short targets (``@short_size``), both >= 0, so sizing never
turns a target to the other side (a long-only account stays long-only):
- ``none``: 1.
- ``fixed_fraction``: ``fraction``.
- ``vol_target``: ``target_vol`` / (annualised std of the last ``vol_window`` log returns up to t).
- ``kelly``: k = ``kelly_fraction`` x mean / variance of the last ``vol_window`` simple returns;
  longs are sized by the edge's sign: ``@size`` = clip(k, 0, ``kelly_cap``) and
  ``@short_size`` = clip(-k, 0, ``kelly_cap``), so a long is taken only with a positive edge and a
  short only with a negative one.
Undefined before enough history: 0 (no position until the size is known). The kernel compares the
sized target with the last requested one every bar, so positions follow their size as it moves.
Stop unit (``backtest.stops.unit``): ``percent`` = 1 (stop distances are fractions of the entry
price); ``atr`` = ATR(atr_period) / close at bar t (distances are ATR multiples).
The kernel caps the sized position at ``env.max_leverage``.
"""

import numpy as np
import pandas as pd
import talib

from src.config_checks import ConfigError
from src.data.timeframes import periods_per_year
from src.envs.market import SHORT_SIZE_COLUMN, SIZE_COLUMN, STOP_UNIT_COLUMN

SIZING = ("none", "fixed_fraction", "vol_target", "kelly")


def size_multipliers(df: pd.DataFrame, cfg, periods: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(long, short) size multipliers per bar, both >= 0 (see the module docstring); ``periods``:
    bars per year (None: derived from ``df``'s index)."""
    close = df["$close"]
    if cfg.method == "none":
        ones = np.ones(len(df))
        return ones, ones
    if cfg.method == "fixed_fraction":
        fixed = np.full(len(df), float(cfg.fraction))
        return fixed, fixed
    if cfg.method == "vol_target":
        realised = np.log(close).diff().rolling(cfg.vol_window).std() * np.sqrt(periods or periods_per_year(df.index))
        size = (cfg.target_vol / realised).replace([np.inf, -np.inf], np.nan).fillna(0.0).to_numpy()
        return size, size
    if cfg.method == "kelly":
        returns = close.pct_change()
        kelly = cfg.kelly_fraction * returns.rolling(cfg.vol_window).mean() / returns.rolling(cfg.vol_window).var()
        kelly = kelly.replace([np.inf, -np.inf], np.nan).fillna(0.0)
        return kelly.clip(0.0, cfg.kelly_cap).to_numpy(), (-kelly).clip(0.0, cfg.kelly_cap).to_numpy()
    raise ConfigError(f"backtest.sizing.method={cfg.method!r}; valid: {', '.join(SIZING)}")


def stop_unit(df: pd.DataFrame, cfg) -> np.ndarray:
    if cfg.unit == "percent":
        return np.ones(len(df))
    if cfg.unit == "atr":
        high, low, close = (df[c].to_numpy(np.float64) for c in ["$high", "$low", "$close"])
        atr = talib.ATR(high, low, close, cfg.atr_period)
        return np.nan_to_num(atr / df["$close"].to_numpy(), nan=0.0)
    raise ConfigError(f"backtest.stops.unit={cfg.unit!r}; valid: percent, atr")


def with_risk_columns(df: pd.DataFrame, backtest_cfg) -> pd.DataFrame:
    """``df`` plus ``@size``, ``@short_size`` and ``@stop_unit`` (not observed by agents);
    ``backtest.periods_per_year`` annualises when set (a live session fixes it)."""
    long_size, short_size = size_multipliers(df, backtest_cfg.sizing, backtest_cfg.get("periods_per_year"))
    return df.assign(
        **{SIZE_COLUMN: long_size, SHORT_SIZE_COLUMN: short_size, STOP_UNIT_COLUMN: stop_unit(df, backtest_cfg.stops)}
    )
