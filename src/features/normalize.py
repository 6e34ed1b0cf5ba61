"""Feature normalisation that uses no future data.

- ``none``: raw indicator values.
- ``rolling_zscore``: (x_t - mean of the last ``window`` values) / their std, up to and
  including t; undefined for the first ``window - 1`` rows (added to the warm-up).
- ``train_zscore``: (x - mean) / std with mean and std fitted on the train split's rows only,
  then applied unchanged to validation and test.
Z-scores are clipped to +-CLIP; a zero std gives 0.
"""

import numpy as np
import pandas as pd
from numba import njit, prange

CLIP = 5.0
METHODS = ("none", "rolling_zscore", "train_zscore")


def normalization_warmup(cfg) -> int:
    """Rows a normalisation needs before its first value."""
    return int(cfg.window) - 1 if cfg.method == "rolling_zscore" else 0


@njit(parallel=True, cache=True)
def _rolling_zscore(values: np.ndarray, window: int, clip: float) -> np.ndarray:
    """Column-wise z-score of each value against the last ``window`` values (itself included),
    by Welford's add/remove updates; NaN until ``window`` finite values are in the window."""
    n_rows, n_cols = values.shape
    out = np.full((n_rows, n_cols), np.nan)
    for j in prange(n_cols):
        count, mean, squares = 0, 0.0, 0.0
        for i in range(n_rows):
            x = values[i, j]
            if np.isfinite(x):
                count += 1
                delta = x - mean
                mean += delta / count
                squares += delta * (x - mean)
            if i >= window:
                old = values[i - window, j]
                if np.isfinite(old):
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
                out[i, j] = min(max(z, -clip), clip)
    return out


def rolling_zscore(features: pd.DataFrame, window: int) -> pd.DataFrame:
    values = np.ascontiguousarray(features.to_numpy(dtype=np.float64))
    return pd.DataFrame(_rolling_zscore(values, int(window), CLIP), index=features.index, columns=features.columns)


def train_zscore(features: pd.DataFrame, fit_rows: int | None, scaler: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """(z-scores, scaler statistics {"mean": {column: value}, "std": {...}}): fitted on the
    first ``fit_rows`` rows, or the given ``scaler`` (a checkpoint's) applied unchanged."""
    if scaler:
        mean, std = pd.Series(scaler["mean"], dtype=float), pd.Series(scaler["std"], dtype=float)
    else:
        train = features.iloc[:fit_rows]
        mean, std = train.mean(), train.std()
    stats = {"mean": mean.to_dict(), "std": std.to_dict()}
    return _zscore(features, features * 0 + mean, features * 0 + std), stats


def _zscore(features: pd.DataFrame, mean: pd.DataFrame, std: pd.DataFrame) -> pd.DataFrame:
    z = (features - mean) / std.where(std > 0)
    return z.where(std > 0, 0.0).where(features.notna() & mean.notna()).clip(-CLIP, CLIP)


def normalize(
    features: pd.DataFrame, cfg, fit_rows: int | None = None, scaler: dict | None = None
) -> tuple[pd.DataFrame, dict]:
    """(normalised features, fitted scaler statistics: empty unless ``train_zscore``, which fits
    on ``fit_rows`` or applies a given ``scaler``)."""
    if cfg.method == "none":
        return features, {}
    if cfg.method == "rolling_zscore":
        return rolling_zscore(features, int(cfg.window)), {}
    if cfg.method == "train_zscore":
        if not fit_rows and not scaler:
            raise ValueError(
                "features.normalize.method=train_zscore needs the train split's "
                "rows to fit on (fit_rows), or a fitted scaler"
            )
        return train_zscore(features, fit_rows, scaler)
    raise ValueError(f"features.normalize.method={cfg.method!r}; valid: {', '.join(METHODS)}")
