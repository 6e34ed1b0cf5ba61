"""Per-bar risk inputs from past bars only: the position-size multiplier and the stop unit.

Sizing (``backtest.sizing.method``), a multiplier on the agent's target decided at bar t:
- ``none``: 1.
- ``fixed_fraction``: ``fraction``.
- ``vol_target``: ``target_vol`` / (annualised std of the last ``vol_window`` log returns up to t).
- ``kelly``: ``kelly_fraction`` x mean / variance of the last ``vol_window`` simple returns,
  clipped to [0, ``kelly_cap``].
Undefined before enough history: 0 (no position until the size is known).
Stop unit (``backtest.stops.unit``): ``percent`` = 1 (stop distances are fractions of the entry
price); ``atr`` = ATR(atr_period) / close at bar t (distances are ATR multiples).
The kernel caps the sized position at ``env.max_leverage``.
"""
import numpy as np
import pandas as pd
import talib

from src.backtest.metrics import periods_per_year
from src.envs.market import SIZE_COLUMN, STOP_UNIT_COLUMN

SIZING = ("none", "fixed_fraction", "vol_target", "kelly")


def size_multiplier(df: pd.DataFrame, cfg) -> np.ndarray:
    close = df["$close"]
    if cfg.method == "none":
        return np.ones(len(df))
    if cfg.method == "fixed_fraction":
        return np.full(len(df), float(cfg.fraction))
    if cfg.method == "vol_target":
        realised = np.log(close).diff().rolling(cfg.vol_window).std() * np.sqrt(periods_per_year(df.index))
        return (cfg.target_vol / realised).replace([np.inf, -np.inf], np.nan).fillna(0.0).to_numpy()
    if cfg.method == "kelly":
        returns = close.pct_change()
        kelly = returns.rolling(cfg.vol_window).mean() / returns.rolling(cfg.vol_window).var()
        return (cfg.kelly_fraction * kelly).clip(0.0, cfg.kelly_cap).fillna(0.0).to_numpy()
    raise ValueError(f"backtest.sizing.method={cfg.method!r}; valid: {', '.join(SIZING)}")


def stop_unit(df: pd.DataFrame, cfg) -> np.ndarray:
    if cfg.unit == "percent":
        return np.ones(len(df))
    if cfg.unit == "atr":
        atr = talib.ATR(*(df[c].to_numpy(np.float64) for c in ["$high", "$low", "$close"]),
                        cfg.atr_period)
        return np.nan_to_num(atr / df["$close"].to_numpy(), nan=0.0)
    raise ValueError(f"backtest.stops.unit={cfg.unit!r}; valid: percent, atr")


def with_risk_columns(df: pd.DataFrame, backtest_cfg) -> pd.DataFrame:
    """``df`` plus ``@size`` and ``@stop_unit`` (not observed by agents)."""
    return df.assign(**{SIZE_COLUMN: size_multiplier(df, backtest_cfg.sizing),
                        STOP_UNIT_COLUMN: stop_unit(df, backtest_cfg.stops)})
