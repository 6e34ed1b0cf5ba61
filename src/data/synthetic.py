"""A seeded synthetic OHLCV market: Markov trend/volatility regimes, Student-t returns, volume."""

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from src.data.validate import validate_ohlcv
from src.registry import register

# (drift per bar, volatility per bar) of each regime: calm up, calm down, volatile flat, crisis.
REGIMES = np.array([[5e-4, 0.006], [-2e-4, 0.007], [1e-4, 0.012], [-1e-4, 0.02]])


def _regime_path(n_bars: int, persistence: float, rng: np.random.Generator) -> np.ndarray:
    """Index of the regime at each bar; stays with probability ``persistence``, else jumps."""
    switches = rng.random(n_bars) > persistence
    jumps = rng.integers(0, len(REGIMES), size=n_bars)
    regime = np.empty(n_bars, dtype=np.int64)
    current = 0
    for i in range(n_bars):
        current = jumps[i] if switches[i] else current
        regime[i] = current
    return regime


def synthetic_ohlcv(
    n_bars: int,
    seed: int,
    freq: str = "1h",
    start: str = "2020-01-01",
    start_price: float = 100.0,
    tail_df: float = 4.0,
    regime_persistence: float = 0.995,
    signal: float = 0.0,
) -> pd.DataFrame:
    """``n_bars`` bars of $open $high $low $close $volume on a UTC index, identical for one seed.

    ``signal`` plants a learnable pattern: close-to-close log returns follow
    r_t = signal * r_{t-1} + e_t (momentum for signal > 0), so the last bar's return, which every
    feature set can see at t, predicts the next one. 0 = no planted signal.
    """
    if not -1.0 < signal < 1.0:
        raise ValueError(f"data.signal={signal} must be in (-1, 1)")
    rng = np.random.default_rng(seed)
    regime = _regime_path(n_bars, regime_persistence, rng)
    drift, vol = REGIMES[regime, 0], REGIMES[regime, 1]
    shocks = rng.standard_t(tail_df, size=n_bars) / np.sqrt(tail_df / (tail_df - 2))
    log_returns = lfilter([1.0], [1.0, -signal], drift + vol * shocks)
    close = start_price * np.exp(np.cumsum(log_returns))
    gap = vol * 0.1 * rng.standard_normal(n_bars)  # overnight-style move from last close to open
    open_ = np.r_[start_price, close[:-1]] * np.exp(gap)
    wick = np.abs(rng.standard_normal((2, n_bars))) * vol * 0.5
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    volume = rng.lognormal(10.0, 0.3, n_bars) * (1.0 + 50.0 * np.abs(log_returns))
    index = pd.date_range(start=start, periods=n_bars, freq=freq.replace("m", "min"), tz="UTC")
    df = pd.DataFrame({"$open": open_, "$high": high, "$low": low, "$close": close, "$volume": volume}, index=index)
    return validate_ohlcv(df, source="synthetic market")


@register("data", "synthetic")
def load_synthetic(cfg) -> pd.DataFrame:
    return synthetic_ohlcv(
        n_bars=cfg.n_bars,
        seed=cfg.seed,
        freq=cfg.freq,
        start=cfg.start,
        start_price=cfg.start_price,
        tail_df=cfg.tail_df,
        regime_persistence=cfg.regime_persistence,
        signal=cfg.signal,
    )
