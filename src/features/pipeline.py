"""``FeatureSet``: indicators -> normalisation -> warm-up cut -> (cached) feature frame.

A feature set's ``compute(df)`` returns raw $-prefixed indicator columns ({name: float64 array of
len(df)}, each its own array: the pipeline normalises and fills them in place) and its look-back
(bars before the first defined value; None = take the first fully defined row). Non-finite
values count as undefined. Rows inside the warm-up are dropped (``warmup_rows``). After it, an undefined value is
forward-filled, and one never defined yet (e.g. 0/0 on a flat market) becomes 0: no value is
ever filled from the future into the past, so there is no backward fill.
"""

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import xxhash
from numba import njit, prange
from numba.typed import List

from src.config_checks import plain_dict
from src.data.cache import read_frame, write_frame
from src.features.normalize import normalization_warmup, normalize

log = logging.getLogger(__name__)
CODE_VERSION = "4"  # bump when a feature's formula changes: cached features become stale
Compute = Callable[[pd.DataFrame], tuple[dict[str, np.ndarray], int | None]]


def frame_hash(df: pd.DataFrame) -> str:
    """xxh3-128 of a frame's index, column names and values, column by column (its content, not
    its file name nor its memory layout): a fast check that a cached frame is the one written."""
    digest = xxhash.xxh3_128()
    digest.update(np.ascontiguousarray(df.index.asi8).tobytes())
    digest.update(json.dumps([str(c) for c in df.columns]).encode())
    for column in df.columns:
        digest.update(np.ascontiguousarray(df[column].to_numpy(dtype=np.float64)).data)
    return digest.hexdigest()


@njit(parallel=True, cache=True)
def fill_forward(columns, start: int) -> int:
    """In place, column by column from row ``start``: a NaN takes the last defined value above it
    (from ``start`` on), or 0 if there is none (never a value from below: no look-ahead). Returns
    how many NaNs were filled."""
    holes = np.zeros(len(columns), np.int64)
    for j in prange(len(columns)):
        values, last = columns[np.intp(j)], 0.0
        for i in range(start, len(values)):
            if np.isnan(values[i]):
                values[i] = last
                holes[j] += 1
            else:
                last = values[i]
    return int(holes.sum())


@njit(cache=True)
def first_defined_row(columns) -> int:
    """The first row where every column is defined (the number of rows if there is none)."""
    n = len(columns[0])
    for i in range(n):
        if all_defined(columns, i):
            return i
    return n


@njit(cache=True)
def all_defined(columns, i: int) -> bool:
    for values in columns:
        if np.isnan(values[i]):
            return False
    return True


class FeatureSet:
    """Callable: OHLCV ``df`` -> OHLCV + feature columns from the first row after warm-up."""

    def __init__(self, name: str, compute: Compute, cfg):
        self.name, self.compute, self.cfg = name, compute, cfg
        self.warmup_rows = 0
        self.scaler: dict = {}  # train_zscore's fitted statistics (what a checkpoint stores)
        self.cache_dir = Path(cfg.cache_dir) if cfg.get("cache_dir") else None

    def __call__(self, df: pd.DataFrame, fit_rows: int | None = None) -> pd.DataFrame:
        """``fit_rows``: the leading rows (the train split) a fitted scaler may learn from."""
        if self.cache_dir is None:
            return self._build(df, fit_rows)
        key = self._cache_key(df, fit_rows)
        path = self.cache_dir / f"{self.name}-{key[:24]}.arrow"
        cached = self._read_cache(path, key)
        if cached is not None:
            return cached
        out = self._build(df, fit_rows)
        write_frame(
            out,
            path,
            {"key": key, "content_hash": frame_hash(out), "warmup_rows": self.warmup_rows, "scaler": self.scaler},
        )
        return out

    def with_scaler(self, df: pd.DataFrame, scaler: dict) -> pd.DataFrame:
        """The feature frame of ``df`` normalised by a given fitted ``scaler`` (a checkpoint's
        statistics; ignored by the unfitted methods), never cached: the live path."""
        return self._build(df, None, scaler)

    def _build(self, df: pd.DataFrame, fit_rows: int | None, scaler: dict | None = None) -> pd.DataFrame:
        raw, lookback = self.compute(df)
        names = list(raw)
        columns, self.scaler = normalize(list(raw.values()), names, self.cfg.normalize, fit_rows, scaler)
        typed = List(columns)
        if lookback is None:
            warmup = first_defined_row(typed)
        else:
            warmup = lookback + normalization_warmup(self.cfg.normalize)
        if warmup >= len(df):
            raise ValueError(
                f"features={self.name}: {len(df)} bars are too few for the "
                f"indicators' warm-up ({warmup} bars); use a longer history"
            )
        self.warmup_rows = warmup
        holes = fill_forward(typed, warmup)
        if holes:
            log.info(
                "features=%s: %d undefined values after warm-up, forward-filled (0 if none before)", self.name, holes
            )
        index = df.index[warmup:]
        features = pd.DataFrame({n: c[warmup:] for n, c in zip(names, columns)}, index=index, copy=False)
        return pd.concat([df.iloc[warmup:], features], axis=1)

    def _cache_key(self, df: pd.DataFrame, fit_rows: int | None) -> str:
        config = plain_dict(self.cfg)
        config.pop("cache_dir", None)
        record = json.dumps([CODE_VERSION, self.name, config, fit_rows], sort_keys=True)
        return hashlib.sha256((frame_hash(df) + record).encode()).hexdigest()

    def _read_cache(self, path: Path, key: str) -> pd.DataFrame | None:
        """The cached frame if its key matches and its content hash verifies; else None. Its
        columns are read-only views of the memory-mapped file (copy before editing in place)."""
        if not path.is_file():
            return None
        try:
            out, record = read_frame(path)
        except Exception as error:  # noqa: BLE001 - an unreadable cache is rebuilt, never trusted
            log.warning("feature cache %s unreadable (%s); recomputing", path, error)
            return None
        if record.get("key") != key or record.get("content_hash") != frame_hash(out):
            log.warning("feature cache %s failed verification; recomputing", path)
            return None
        self.warmup_rows, self.scaler = int(record["warmup_rows"]), record.get("scaler", {})
        return out
