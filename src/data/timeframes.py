"""Time and bar utilities every layer uses (data -> features -> envs -> agents -> backtest)."""

import pandas as pd

SECONDS_PER_YEAR = 365.25 * 24 * 3600


def periods_per_year(index: pd.DatetimeIndex) -> float:
    """Bars per year observed in ``index`` (e.g. ~8766 for 24/7 hourly, ~252 for equity dailies)."""
    if len(index) < 2 or (index[-1] - index[0]).total_seconds() <= 0:
        raise ValueError("need at least two distinct timestamps to derive the bar frequency")
    return float((len(index) - 1) * SECONDS_PER_YEAR / (index[-1] - index[0]).total_seconds())
