"""Reject OHLCV data that would make a backtest dishonest, naming the row and column at fault."""

import numpy as np
import pandas as pd

OHLCV = ["$open", "$high", "$low", "$close", "$volume"]


class DataValidationError(ValueError):
    """Bad market data; the message names the source, row (timestamp) and column, and a fix."""


def _fail(source: str, problem: str, fix: str) -> None:
    raise DataValidationError(f"{source}: {problem}. Fix: {fix}.")


def _first_bad(df: pd.DataFrame, mask: pd.Series | np.ndarray) -> str:
    position = int(np.flatnonzero(np.asarray(mask))[0])
    return f"row {position} (timestamp {df.index[position]})"


def validate_ohlcv(df: pd.DataFrame, source: str = "data") -> pd.DataFrame:
    """Check ``df`` has $-prefixed OHLCV on a sorted, unique UTC DatetimeIndex with sane values.

    Returns ``df`` unchanged; raises DataValidationError on the first problem found.
    """
    missing = [c for c in OHLCV if c not in df.columns]
    if missing:
        _fail(source, f"missing column(s) {missing}", f"provide columns {OHLCV}")
    if not isinstance(df.index, pd.DatetimeIndex):
        _fail(source, f"index is {type(df.index).__name__}, not a DatetimeIndex", "index by timestamp")
    if df.index.tz is None or str(df.index.tz) != "UTC":
        _fail(source, f"index timezone is {df.index.tz}, not UTC", "localize/convert the index to UTC")
    if len(df) < 2:
        _fail(source, f"only {len(df)} row(s)", "provide a longer history")
    for column in OHLCV:
        values = df[column].to_numpy(dtype=float)
        if not np.isfinite(values).all():
            where = _first_bad(df, ~np.isfinite(values))
            _fail(source, f"NaN or infinite value at {where}, column {column}", "drop or repair that bar")
    duplicated = df.index.duplicated()
    if duplicated.any():
        _fail(source, f"duplicate timestamp at {_first_bad(df, duplicated)}", "drop duplicate bars")
    unsorted = np.r_[False, np.diff(df.index.asi8) < 0]
    if unsorted.any():
        _fail(source, f"timestamps not increasing at {_first_bad(df, unsorted)}", "sort by time")
    for column in OHLCV[:4]:
        bad = df[column] <= 0
        if bad.any():
            _fail(source, f"non-positive price at {_first_bad(df, bad)}, column {column}", "fix that bar")
    body_high = df[["$open", "$close"]].max(axis=1)
    body_low = df[["$open", "$close"]].min(axis=1)
    checks = [
        (df["$high"] < body_high, "$high", "high below max(open, close)"),
        (df["$low"] > body_low, "$low", "low above min(open, close)"),
        (df["$volume"] < 0, "$volume", "negative volume"),
    ]
    for bad, column, problem in checks:
        if bad.any():
            _fail(source, f"{problem} at {_first_bad(df, bad)}, column {column}", "fix that bar")
    return df
