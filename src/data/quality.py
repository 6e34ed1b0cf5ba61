"""Gaps, duplicates and out-of-order bars: fail with a clear error, or repair and count.

``data.on_invalid``: ``fail`` names the first bad timestamp; ``repair`` sorts, drops duplicate
timestamps (keeping the last), and forward-fills missing bars as flat bars at the previous close
with zero volume, marked ``@filled = 1`` (an @-column: a per-bar input never observed by agents).
The counts land in ``df.attrs["data_quality"]``. Sources repair after loading, every time: a raw
cache holds only what the exchange returned.
"""

import numpy as np
import pandas as pd

from src.data.validate import OHLCV, DataValidationError

ON_INVALID = ("fail", "repair")
FILLED = "@filled"


def bar_delta(timeframe: str) -> pd.Timedelta:
    """'1m' | '5m' | '1h' | '4h' | '1d' | '1w' -> the bar length."""
    units = {"m": "min", "h": "h", "d": "D", "w": "W"}
    if not timeframe or timeframe[-1] not in units or not timeframe[:-1].isdigit():
        raise ValueError(f"timeframe {timeframe!r}: use <number><m|h|d|w>, e.g. 1h")
    return pd.Timedelta(int(timeframe[:-1]), units[timeframe[-1]])


def check_bars(df: pd.DataFrame, timeframe: str | None, on_invalid: str, source: str) -> pd.DataFrame:
    """``df`` with sorted, unique, gap-free bars (repaired or verified); counts in attrs.

    Without a ``timeframe`` (e.g. trading days with weekends) gaps are not checked."""
    if on_invalid not in ON_INVALID:
        raise ValueError(f"data.on_invalid={on_invalid!r}; valid: {', '.join(ON_INVALID)}")
    stamps = df.index
    unsorted = int((np.diff(stamps.asi8) < 0).sum())
    duplicates = int(stamps.duplicated().sum())
    ordered = df[~stamps.duplicated(keep="last")].sort_index()
    if timeframe is None:
        expected = ordered.index
    else:
        expected = pd.date_range(ordered.index[0], ordered.index[-1], freq=bar_delta(timeframe))
    missing = expected.difference(ordered.index)
    off_grid = ordered.index.difference(expected)
    counts = {"unsorted": unsorted, "duplicates": duplicates, "gaps": len(missing), "off_grid": len(off_grid)}
    if on_invalid == "fail":
        problems = [
            (unsorted, lambda: _first(np.diff(stamps.asi8) < 0, stamps, 1), "timestamps not increasing"),
            (duplicates, lambda: stamps[stamps.duplicated()][0], "duplicate timestamp"),
            (len(missing), lambda: missing[0], f"missing {timeframe} bar (gap)"),
            (len(off_grid), lambda: off_grid[0], f"timestamp off the {timeframe} grid"),
        ]
        for count, where, what in problems:
            if count:
                raise DataValidationError(
                    f"{source}: {what} at {where()} (the timestamp index; {count} such rows). "
                    "Fix: clean the data, or set data.on_invalid=repair to sort, de-duplicate "
                    "and forward-fill gaps"
                )
        out = ordered
    else:
        out = _fill_gaps(ordered[~ordered.index.isin(off_grid)], expected)
    out.attrs["data_quality"] = {"on_invalid": on_invalid, **counts}
    return out


def _first(mask: np.ndarray, stamps: pd.DatetimeIndex, shift: int):
    return stamps[int(np.flatnonzero(mask)[0]) + shift]


def _fill_gaps(df: pd.DataFrame, expected: pd.DatetimeIndex) -> pd.DataFrame:
    """Missing bars become flat bars at the last close, zero volume, ``@filled = 1``."""
    out = df.reindex(expected)
    filled = out["$close"].isna()
    close = out["$close"].ffill()
    for column in OHLCV[:4]:
        out[column] = out[column].fillna(close)
    out["$volume"] = out["$volume"].fillna(0.0)
    out[FILLED] = filled.astype(float)
    return out
