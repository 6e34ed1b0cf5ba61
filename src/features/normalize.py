"""Feature normalisation that uses no future data.

- ``none``: raw indicator values.
- ``rolling_zscore``: (x_t - mean of the last ``window`` values) / their std, up to and
  including t; undefined for the first ``window - 1`` rows (added to the warm-up).
- ``train_zscore``: (x - mean) / std with mean and std fitted on the train split's rows only,
  then applied unchanged to validation and test.
Z-scores are clipped to +-CLIP; a zero std gives 0.
"""
import pandas as pd

CLIP = 5.0
METHODS = ("none", "rolling_zscore", "train_zscore")


def normalization_warmup(cfg) -> int:
    """Rows a normalisation needs before its first value."""
    return int(cfg.window) - 1 if cfg.method == "rolling_zscore" else 0


def rolling_zscore(features: pd.DataFrame, window: int) -> pd.DataFrame:
    mean = features.rolling(window, min_periods=window).mean()
    std = features.rolling(window, min_periods=window).std()
    return _zscore(features, mean, std)


def train_zscore(features: pd.DataFrame, fit_rows: int) -> pd.DataFrame:
    train = features.iloc[:fit_rows]
    return _zscore(features, features * 0 + train.mean(), features * 0 + train.std())


def _zscore(features: pd.DataFrame, mean: pd.DataFrame, std: pd.DataFrame) -> pd.DataFrame:
    z = (features - mean) / std.where(std > 0)
    return z.where(std > 0, 0.0).where(features.notna() & mean.notna()).clip(-CLIP, CLIP)


def normalize(features: pd.DataFrame, cfg, fit_rows: int | None = None) -> pd.DataFrame:
    if cfg.method == "none":
        return features
    if cfg.method == "rolling_zscore":
        return rolling_zscore(features, int(cfg.window))
    if cfg.method == "train_zscore":
        if not fit_rows:
            raise ValueError("features.normalize.method=train_zscore needs the train split's "
                             "rows to fit on (fit_rows)")
        return train_zscore(features, fit_rows)
    raise ValueError(f"features.normalize.method={cfg.method!r}; valid: {', '.join(METHODS)}")
