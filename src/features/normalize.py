"""Feature normalisation that uses no future data.

- ``none``: raw indicator values.
- ``rolling_zscore``: (x_t - mean of the last ``window`` values) / their std, up to and
  including t; undefined for the first ``window - 1`` rows (added to the warm-up).
- ``train_zscore``: (x - mean) / std with mean and std fitted on the train split's rows only,
  then applied unchanged to validation and test.
Z-scores are clipped to +-CLIP; a zero std gives 0.
"""

import warnings

import numpy as np
from numba import njit, prange
from numba.typed import List

CLIP = 5.0
METHODS = ("none", "rolling_zscore", "train_zscore")


def normalization_warmup(cfg) -> int:
    """Rows a normalisation needs before its first value."""
    return int(cfg.window) - 1 if cfg.method == "rolling_zscore" else 0


@njit(parallel=True, cache=True)
def _rolling_zscore(columns, window: int, clip: float) -> None:
    """In place, column by column: the z-score of each value against the last ``window`` values
    (itself included), by Welford's add/remove updates (a ring buffer keeps the raw values that
    leave the window; a full window that swaps one finite value for another takes the one-step
    replace update); NaN until ``window`` finite values are in the window."""
    for j in prange(len(columns)):
        values = columns[np.intp(j)]
        ring = np.empty(window)
        count, mean, squares = 0, 0.0, 0.0
        for i in range(len(values)):
            x = values[i]
            old = ring[i % window]
            ring[i % window] = x
            values[i] = np.nan
            if count == window and i >= window and np.isfinite(x):  # old is finite: the window was full
                step = x - old
                new_mean = mean + step / window
                squares += step * (x - new_mean + old - mean)
                mean = new_mean
            else:
                if np.isfinite(x):
                    count += 1
                    delta = x - mean
                    mean += delta / count
                    squares += delta * (x - mean)
                if i >= window and np.isfinite(old):
                    count -= 1
                    if count == 0:
                        mean, squares = 0.0, 0.0
                    else:
                        delta = old - mean
                        mean -= delta / count
                        squares -= delta * (old - mean)
            if count == window and np.isfinite(x):
                variance = squares / (window - 1)
                std = np.sqrt(variance) if variance > 0 else 0.0
                # a spread below float64 resolution of the mean is no spread: z = 0
                z = (x - mean) / std if std > 1e-12 * max(abs(mean), 1.0) else 0.0
                values[i] = min(max(z, -clip), clip)


@njit(parallel=True, cache=True)
def _missing_if_not_finite(columns) -> None:
    for j in prange(len(columns)):
        values = columns[np.intp(j)]
        for i in range(len(values)):
            if not np.isfinite(values[i]):
                values[i] = np.nan


def rolling_zscore(columns: list[np.ndarray], window: int) -> list[np.ndarray]:
    """The rolling z-scores of each float64 column, computed in place (non-finite values count
    as missing)."""
    _rolling_zscore(List(columns), int(window), CLIP)
    return columns


def train_zscore(
    columns: list[np.ndarray], names: list[str], fit_rows: int | None, scaler: dict | None = None
) -> tuple[list[np.ndarray], dict]:
    """(z-scores, scaler statistics {"mean": {name: value}, "std": {...}}): fitted on the first
    ``fit_rows`` rows (missing values skipped), or the given ``scaler`` (a checkpoint's) applied
    unchanged. A zero or undefined std gives 0; a missing value or mean stays missing."""
    _missing_if_not_finite(List(columns))
    if scaler:
        mean = [float(scaler["mean"].get(name, np.nan)) for name in names]
        std = [float(scaler["std"].get(name, np.nan)) for name in names]
    else:
        with warnings.catch_warnings():  # an all-missing column has no mean: NaN, as it should
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = [float(np.nanmean(x[:fit_rows])) for x in columns]
            std = [float(np.nanstd(x[:fit_rows], ddof=1)) for x in columns]
    for x, m, sd in zip(columns, mean, std):
        missing = np.isnan(x)
        x[:] = np.clip((x - m) / sd, -CLIP, CLIP) if sd > 0 else 0.0
        x[missing | np.isnan(m)] = np.nan
    return columns, {"mean": dict(zip(names, mean)), "std": dict(zip(names, std))}


def normalize(
    columns: list[np.ndarray], names: list[str], cfg, fit_rows: int | None = None, scaler: dict | None = None
) -> tuple[list[np.ndarray], dict]:
    """(normalised ``columns`` of ``names``, in place, and the fitted scaler statistics: empty
    unless ``train_zscore``, which fits on ``fit_rows`` or applies a given ``scaler``).
    Non-finite values come out missing (NaN)."""
    if cfg.method == "none":
        _missing_if_not_finite(List(columns))
        return columns, {}
    if cfg.method == "rolling_zscore":
        return rolling_zscore(columns, int(cfg.window)), {}
    if cfg.method == "train_zscore":
        if not fit_rows and not scaler:
            raise ValueError(
                "features.normalize.method=train_zscore needs the train split's "
                "rows to fit on (fit_rows), or a fitted scaler"
            )
        return train_zscore(columns, names, fit_rows, scaler)
    raise ValueError(f"features.normalize.method={cfg.method!r}; valid: {', '.join(METHODS)}")
