"""Performance metrics of an equity curve, every formula in one place.

``equity``: per-bar equity (quote currency) on a DatetimeIndex; r_t = equity_t / equity_{t-1} - 1.
``periods_per_year`` (P) comes from the data's bar spacing unless given.

- total_return = equity_T / equity_0 - 1
- cagr = (equity_T / equity_0) ** (P / n_periods) - 1
- volatility (annualised) = std(r) * sqrt(P)
- sharpe = mean(r - rf/P) / std(r) * sqrt(P)                     (0 when std(r) = 0)
- sortino = mean(r - rf/P) / sqrt(mean(min(r - rf/P, 0)^2)) * sqrt(P)  (0 when no downside)
- max_drawdown = min_t (equity_t / max_{s<=t} equity_s - 1), in [-1, 0]
- calmar = cagr / |max_drawdown|                                  (0 when max_drawdown = 0)
- trades = number of fills; exposure = fraction of bars with a non-zero position
"""
import numpy as np
import pandas as pd

SECONDS_PER_YEAR = 365.25 * 24 * 3600


def periods_per_year(index: pd.DatetimeIndex) -> float:
    """Bars per year observed in ``index`` (e.g. ~8766 for 24/7 hourly, ~252 for equity dailies)."""
    span = (index[-1] - index[0]).total_seconds()
    if len(index) < 2 or span <= 0:
        raise ValueError("need at least two distinct timestamps to derive the bar frequency")
    return (len(index) - 1) * SECONDS_PER_YEAR / span


def max_drawdown(equity: np.ndarray) -> float:
    peak = np.maximum.accumulate(equity)
    return float(np.min(equity / peak - 1.0))


def compute_metrics(equity: pd.Series, positions: np.ndarray, n_trades: int,
                    periods: float | None = None, risk_free_rate: float = 0.0) -> dict[str, float]:
    """The metrics above for one equity curve; ``positions`` are per-bar position fractions."""
    values = equity.to_numpy(dtype=float)
    periods = periods or periods_per_year(equity.index)
    returns = values[1:] / values[:-1] - 1.0
    excess = returns - risk_free_rate / periods
    growth = values[-1] / values[0]
    std = returns.std(ddof=1) if len(returns) > 1 else 0.0
    downside = np.sqrt(np.mean(np.minimum(excess, 0.0) ** 2)) if len(returns) else 0.0
    cagr = growth ** (periods / max(len(returns), 1)) - 1.0 if growth > 0 else -1.0
    drawdown = max_drawdown(values)
    return {
        "total_return": growth - 1.0,
        "cagr": cagr,
        "volatility": std * np.sqrt(periods),
        "sharpe": excess.mean() / std * np.sqrt(periods) if std > 0 else 0.0,
        "sortino": excess.mean() / downside * np.sqrt(periods) if downside > 0 else 0.0,
        "max_drawdown": drawdown,
        "calmar": cagr / abs(drawdown) if drawdown < 0 else 0.0,
        "trades": float(n_trades),
        "exposure": float(np.mean(np.abs(positions) > 1e-12)) if len(positions) else 0.0,
    }
