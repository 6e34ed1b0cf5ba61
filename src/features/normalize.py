"""Feature normalisation that uses no future data."""
import pandas as pd

CLIP = 5.0  # z-scores beyond +-CLIP are clipped: heavy tails must not dominate the network input


def rolling_zscore(features: pd.DataFrame, window: int) -> pd.DataFrame:
    """(x_t - mean(x_{t-window+1..t})) / std(same bars); NaN until ``window`` bars exist."""
    mean = features.rolling(window, min_periods=window).mean()
    std = features.rolling(window, min_periods=window).std()
    return ((features - mean) / std.where(std > 0)).fillna(0.0).where(mean.notna()).clip(-CLIP, CLIP)


def normalize(features: pd.DataFrame, cfg) -> pd.DataFrame:
    if cfg.method == "none":
        return features
    if cfg.method == "rolling_zscore":
        return rolling_zscore(features, int(cfg.window))
    raise ValueError(f"unknown features.normalize.method {cfg.method!r}; valid: none, rolling_zscore")
