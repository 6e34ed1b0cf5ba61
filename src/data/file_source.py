"""OHLCV from a CSV or parquet file, in the common layouts.

Timestamps: a column (``data.timestamp_column``, else the first of timestamp/time/date/datetime/
open_time, else the first column) or a DatetimeIndex; ISO-8601 or epoch seconds/milliseconds;
naive stamps are taken as UTC. OHLCV columns in any case, with or without the ``$`` prefix.
"""

import importlib.resources
from pathlib import Path

import pandas as pd

from src.data.quality import check_bars
from src.data.validate import OHLCV, DataValidationError, validate_ohlcv
from src.registry import register

TIMESTAMP_NAMES = ("timestamp", "time", "date", "datetime", "open_time", "unnamed: 0")


def _parse_timestamps(values: pd.Series | pd.Index, path: Path, column: str) -> pd.DatetimeIndex:
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = pd.DatetimeIndex(values)
        return stamps.tz_localize("UTC") if stamps.tz is None else stamps.tz_convert("UTC")
    if pd.api.types.is_numeric_dtype(values):
        unit = "ms" if pd.Series(values).abs().max() > 1e11 else "s"
        return pd.DatetimeIndex(pd.to_datetime(values, unit=unit, utc=True))
    try:
        return pd.DatetimeIndex(pd.to_datetime(values, utc=True, format="ISO8601"))
    except (ValueError, TypeError) as error:
        raise DataValidationError(
            f"{path}: column {column!r} is not ISO-8601 or epoch timestamps ({error}). "
            "Fix: write timestamps as 2024-01-01T00:00:00Z or epoch seconds/milliseconds, "
            "or name the right column with data.timestamp_column."
        ) from None


def _timestamps(raw: pd.DataFrame, path: Path, column: str | None) -> pd.DatetimeIndex:
    if column is None and isinstance(raw.index, pd.DatetimeIndex):
        return _parse_timestamps(raw.index, path, "index")
    by_name = {c.lower(): c for c in map(str, raw.columns)}
    if column is not None and column.lower() not in by_name:
        raise DataValidationError(
            f"{path}: no timestamp column {column!r}; columns are {list(raw.columns)}. Fix: set data.timestamp_column."
        )
    name = column or next((by_name[n] for n in TIMESTAMP_NAMES if n in by_name), raw.columns[0])
    return _parse_timestamps(raw[by_name.get(str(name).lower(), name)], path, str(name))


def read_ohlcv_file(
    path: str | Path, timestamp_column: str | None = None, timeframe: str | None = None, on_invalid: str = "fail"
) -> pd.DataFrame:
    """$-prefixed OHLCV on a UTC index from ``path`` (.csv or .parquet).

    Unsorted or duplicate bars (and, with ``timeframe``, gaps) fail or are repaired per
    ``on_invalid``; see src/data/quality.py."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (config field data.path)")
    raw = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    by_name = {str(c).lower().lstrip("$"): c for c in raw.columns}
    missing = [c for c in OHLCV if c.lstrip("$") not in by_name]
    if missing:
        raise DataValidationError(
            f"{path}: missing column(s) {missing} (have {list(raw.columns)}). Fix: add them to the file."
        )
    df = pd.DataFrame(
        {c: raw[by_name[c.lstrip("$")]].to_numpy(dtype=float) for c in OHLCV},
        index=_timestamps(raw, path, timestamp_column).rename(None),
    )
    return validate_ohlcv(check_bars(df, timeframe, on_invalid, source=str(path)), source=str(path))


@register("data", "csv")
def load_file(cfg) -> pd.DataFrame:
    return read_ohlcv_file(cfg.path, cfg.timestamp_column, cfg.timeframe, cfg.on_invalid)


@register("data", "sample")
def load_sample(cfg) -> pd.DataFrame:
    """Real OHLCV that ships in the ``backtesting`` package (the dev extra), read offline."""
    try:
        folder = importlib.resources.files("backtesting") / "test"
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "data=sample_* needs the `backtesting` package: pip install -e '.[dev]' (make setup does)"
        ) from None
    with importlib.resources.as_file(folder / cfg.file) as path:
        return read_ohlcv_file(path, None, cfg.timeframe, cfg.on_invalid)
