"""OHLCV from a CSV file: a timestamp column (ISO-8601, or epoch seconds/milliseconds)."""
from pathlib import Path

import pandas as pd

from src.data.validate import OHLCV, DataValidationError, validate_ohlcv
from src.registry import register


def _parse_timestamps(values: pd.Series, path: Path, column: str) -> pd.DatetimeIndex:
    if pd.api.types.is_numeric_dtype(values):
        unit = "ms" if values.abs().max() > 1e11 else "s"
        return pd.DatetimeIndex(pd.to_datetime(values, unit=unit, utc=True))
    try:
        return pd.DatetimeIndex(pd.to_datetime(values, utc=True, format="ISO8601"))
    except (ValueError, TypeError) as error:
        raise DataValidationError(
            f"{path}: column {column!r} is not ISO-8601 or epoch timestamps ({error}). "
            "Fix: write timestamps as 2024-01-01T00:00:00Z or epoch seconds/milliseconds."
        ) from None


def read_ohlcv_csv(path: str | Path, timestamp_column: str = "timestamp") -> pd.DataFrame:
    """Read ``path`` into $-prefixed OHLCV on a UTC index (naive stamps are taken as UTC)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CSV file (config field data.path)")
    raw = pd.read_csv(path)
    by_name = {c.lower().lstrip("$"): c for c in raw.columns}
    if timestamp_column.lower() not in by_name:
        raise DataValidationError(
            f"{path}: no timestamp column {timestamp_column!r}; columns are {list(raw.columns)}. "
            "Fix: set data.timestamp_column."
        )
    missing = [c for c in OHLCV if c.lstrip("$") not in by_name]
    if missing:
        raise DataValidationError(f"{path}: missing column(s) {missing}. Fix: add them to the file.")
    df = pd.DataFrame({c: raw[by_name[c.lstrip("$")]].to_numpy(dtype=float) for c in OHLCV})
    stamps = _parse_timestamps(raw[by_name[timestamp_column.lower()]], path, timestamp_column)
    df.index = stamps.rename(None)
    return validate_ohlcv(df, source=str(path))


@register("data", "csv")
def load_csv(cfg) -> pd.DataFrame:
    return read_ohlcv_csv(cfg.path, cfg.timestamp_column)
