"""Performance metrics of a backtest, every formula in one place.

``equity``: per-bar equity (quote currency) on a DatetimeIndex; r_t = equity_t / equity_{t-1} - 1.
P = ``periods_per_year``: bars per year observed in the data's index, unless given.
A round trip runs from a bar where the position leaves 0 (or flips sign) to the bar it returns to
0 (or flips); its P&L is the equity change over those bars.

- total_return = equity_T / equity_0 - 1
- cagr = (equity_T / equity_0) ** (P / n_returns) - 1
- volatility = std(r) * sqrt(P)                          (sample std, annualised)
- sharpe = mean(r - rf/P) / std(r) * sqrt(P)             (0 when std(r) = 0)
- sortino = mean(r - rf/P) / sqrt(mean(min(r - rf/P, 0)^2)) * sqrt(P)
  (without downside: RATIO_CAP if the mean excess is > 0, 0 if it is 0)
- max_drawdown = min_t (equity_t / max_{s<=t} equity_s - 1), clipped to [-1, 0] (equity at or
  below zero is a -100% drawdown)
- max_drawdown_bars = the longest run of bars below a previous equity peak
- calmar = cagr / |max_drawdown|  (without drawdown: RATIO_CAP if cagr > 0, 0 if it is 0)
- var_95 = -(5th percentile of r); cvar_95 = -(mean of r at or below it)   (per bar, historical)
- win_rate = winning round trips / round trips; profit_factor = gross win / gross loss
  (0 without trades; inf-safe: gross win / max(gross loss, tiny), capped at 1e6)
- avg_trade = mean round-trip P&L / initial equity
- exposure = fraction of bars with a non-zero position
- turnover = sum |fill units x price| / mean equity, per year (x P / n_returns)
- fees = total fees / initial equity
- financing = sum over bars of the borrow + funding charged in that bar / initial equity
- trades = number of fills
- sharpe_per_period = mean(r - rf/P) / std(r) (not annualised: what PSR and DSR take)
- skewness, kurtosis = of r (kurtosis not excess: 3 for a normal distribution); n_returns
- psr = probabilistic Sharpe ratio against a Sharpe of 0 (Bailey & Lopez de Prado 2012):
  PSR(SR*) = Phi((SR - SR*) sqrt(n - 1) / sqrt(1 - skew SR + (kurt - 1) / 4 SR^2)), SR and SR*
  per period; the probability that the true Sharpe exceeds SR*
- deflated Sharpe ratio (Bailey & Lopez de Prado 2014): PSR(SR0) with SR0 the expected maximum
  Sharpe of N trials of Sharpe variance V, SR0 = sqrt(V) ((1 - g) Phi^-1(1 - 1/N)
  + g Phi^-1(1 - 1/(N e))), g = Euler-Mascheroni constant (``expected_max_sharpe``,
  ``deflated_sharpe``)
RATIO_CAP (1e6) stands for "infinite" (a flawless curve ranks first, and every value stays a
finite number that JSON and MLflow store).
"""

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
from numba import njit, prange

from src.data.timeframes import periods_per_year

EULER_GAMMA = 0.5772156649015329
RATIO_CAP = 1e6


def rolling_sharpe(returns: pd.Series, periods: float) -> tuple[pd.Series, int]:
    """(annualised Sharpe over a trailing window, the window in bars): a tenth of the returns,
    at most a month of bars (``periods`` / 12), at least 5."""
    window = max(min(len(returns) // 10, int(periods / 12)), 5)
    return returns.rolling(window).mean() / returns.rolling(window).std() * np.sqrt(periods), window


@njit(cache=True)
def drawdown_bars(equity: np.ndarray) -> int:
    """Longest run of consecutive bars below the running peak."""
    peak, longest, run = -np.inf, 0, 0
    for value in equity:
        peak = max(peak, value)
        run = run + 1 if value < peak else 0
        longest = max(longest, run)
    return longest


@njit(cache=True)
def round_trip_pnl(equity: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Equity change over each holding period (see the module docstring)."""
    side = np.sign(np.round(positions, 12))
    pnl = np.empty(len(side))
    count, start = 0, -1
    for k in range(1, len(side)):
        if side[k] != side[k - 1]:
            if start >= 0:
                pnl[count] = equity[k] - equity[start - 1] if side[k] == 0 else equity[k - 1] - equity[start - 1]
                count += 1
            start = k if side[k] != 0 else -1
    if start >= 0:
        pnl[count] = equity[-1] - equity[start - 1]
        count += 1
    return pnl[:count]


def normal_cdf(x: float) -> float:
    """Phi(x), the standard normal distribution function."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def probabilistic_sharpe(sharpe: float, n: int, skewness: float, kurtosis: float, benchmark: float = 0.0) -> float:
    """PSR: P(true Sharpe > ``benchmark``) given a per-period ``sharpe`` estimated from ``n``
    returns with that ``skewness`` and (non-excess) ``kurtosis``. 0.5 when n < 2."""
    if n < 2:
        return 0.5
    variance = 1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if variance <= 0:
        return float(sharpe > benchmark)
    return normal_cdf((sharpe - benchmark) * math.sqrt(n - 1) / math.sqrt(variance))


def psr_against(metrics: dict[str, float], benchmark: dict[str, float]) -> float:
    """PSR of a backtest's ``metrics`` against the per-period Sharpe of ``benchmark``'s."""
    return probabilistic_sharpe(
        metrics["sharpe_per_period"],
        int(metrics["n_returns"]),
        metrics["skewness"],
        metrics["kurtosis"],
        benchmark["sharpe_per_period"],
    )


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """SR0: the expected maximum per-period Sharpe of ``n_trials`` unskilled trials whose Sharpes
    have ``variance`` (0 for a single trial)."""
    if n_trials < 2:
        return 0.0
    z = NormalDist().inv_cdf  # the standard normal quantile function
    return float(
        np.sqrt(variance) * ((1 - EULER_GAMMA) * z(1 - 1 / n_trials) + EULER_GAMMA * z(1 - 1 / (n_trials * np.e)))
    )


def deflated_sharpe(
    sharpe: float, n: int, skewness: float, kurtosis: float, trial_sharpes: list[float]
) -> dict[str, float]:
    """DSR of the selected per-period ``sharpe`` after ``len(trial_sharpes)`` trials (their
    per-period Sharpes, the selected one among them), with what went into it."""
    trials = len(trial_sharpes)
    variance = float(np.var(trial_sharpes, ddof=1)) if trials > 1 else 0.0
    benchmark = expected_max_sharpe(trials, variance)
    return {
        "dsr": probabilistic_sharpe(sharpe, n, skewness, kurtosis, benchmark),
        "trials": float(trials),
        "trial_sharpe_variance": variance,
        "expected_max_sharpe": benchmark,
        "sharpe_per_period": sharpe,
        "skewness": skewness,
        "kurtosis": kurtosis,
        "n_returns": float(n),
    }


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator for a denominator >= 0; a zero one gives RATIO_CAP x sign."""
    if denominator > 0:
        return float(min(max(numerator / denominator, -RATIO_CAP), RATIO_CAP))
    return float(np.sign(numerator) * RATIO_CAP)


def compute_metrics(
    equity: pd.Series,
    positions: np.ndarray,
    trades: pd.DataFrame | None = None,
    periods: float | None = None,
    risk_free_rate: float = 0.0,
    financing: np.ndarray | None = None,
) -> dict[str, float]:
    """The metrics above for one equity curve; ``positions`` are per-bar position fractions;
    ``trades`` the fills (columns units, price, fee), or None; ``financing`` the borrow and
    funding charged in each bar (quote currency), or None."""
    fills = trades if trades is not None else pd.DataFrame(columns=["units", "price", "fee"])
    return curve_metrics(
        equity.to_numpy(dtype=float),
        positions,
        periods or periods_per_year(equity.index),
        risk_free_rate,
        traded=float((fills["units"].abs() * fills["price"]).sum()) if len(fills) else 0.0,
        fees=float(fills["fee"].sum()) if len(fills) else 0.0,
        n_trades=len(fills),
        financing=float(np.sum(financing)) if financing is not None else 0.0,
    )


# what ``_curve_stats`` writes for one curve, in order
CURVE_STATS = (
    "mean_excess",
    "std",
    "downside",
    "var",
    "cvar",
    "skewness",
    "kurtosis",
    "drawdown",
    "drawdown_bars",
    "round_trips",
    "wins",
    "gross_win",
    "gross_loss",
    "pnl_sum",
    "exposure",
    "first",
    "last",
    "mean",
)


def curve_metrics(
    values: np.ndarray,
    positions: np.ndarray,
    periods: float,
    risk_free_rate: float,
    traded: float,
    fees: float,
    n_trades: int,
    financing: float,
) -> dict[str, float]:
    """``compute_metrics`` from arrays: ``values`` the equity per bar, ``traded`` the notional of
    every fill, ``fees`` and ``financing`` the totals charged (all quote currency)."""
    stats = np.empty(len(CURVE_STATS))
    values = np.ascontiguousarray(values, dtype=np.float64)
    _curve_stats(values, np.ascontiguousarray(positions, dtype=np.float64), risk_free_rate / periods, stats)
    return stats_metrics(stats, len(values) - 1, periods, traded, fees, n_trades, financing)


@njit(cache=True, parallel=True)
def curves_stats(equity: np.ndarray, positions: np.ndarray, ends: np.ndarray, scale: float, rf_per_period: np.ndarray):
    """``_curve_stats`` of N curves at once, over numba's threads: curve i is
    ``equity[i, : ends[i] + 1] * scale`` with ``positions[i, : ends[i] + 1]`` (env-major paths of
    a walk) and risk-free rate ``rf_per_period[i]``; returns (N, len(CURVE_STATS))."""
    out = np.empty((equity.shape[0], len(CURVE_STATS)))
    for i in prange(equity.shape[0]):
        end = ends[i] + 1
        _curve_stats(equity[i, :end] * scale, positions[i, :end], rf_per_period[i], out[i])
    return out


@njit(cache=True)
def _curve_stats(values: np.ndarray, positions: np.ndarray, rf_per_period: float, out: np.ndarray) -> None:
    """Writes into ``out`` the CURVE_STATS of one curve: ``_return_stats``, ``_trade_stats``,
    then the first, last and mean equity."""
    (out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7], out[8]) = _return_stats(values, rf_per_period)
    (out[9], out[10], out[11], out[12], out[13], out[14]) = _trade_stats(values, positions)
    out[15], out[16], out[17] = values[0], values[-1], values.mean()


def stats_metrics(
    stats: np.ndarray, n_returns: int, periods: float, traded: float, fees: float, n_trades: int, financing: float
) -> dict[str, float]:
    """The metrics (module docstring) of a curve from its CURVE_STATS ``stats``, its number of
    returns, its ``periods`` per year, and the totals ``traded``, ``fees`` and ``financing``."""
    (mean_excess, std, downside, var, cvar, skewness, kurtosis, drawdown, drawdown_length) = stats[:9].tolist()
    round_trips, wins, gross_win, gross_loss, pnl_sum, exposure, first, last, mean = stats[9:].tolist()
    n = max(n_returns, 1)
    growth = last / first
    cagr = growth ** (periods / n) - 1.0 if growth > 0 else -1.0
    per_period = mean_excess / std if std > 0 else 0.0
    return {
        "total_return": growth - 1.0,
        "cagr": cagr,
        "volatility": std * math.sqrt(periods),
        "sharpe": per_period * math.sqrt(periods),
        "sharpe_per_period": float(per_period),
        "skewness": skewness,
        "kurtosis": kurtosis,
        "n_returns": float(n_returns),
        "psr": probabilistic_sharpe(per_period, n_returns, skewness, kurtosis),
        "sortino": _ratio(mean_excess * math.sqrt(periods), downside) if n_returns else 0.0,
        "max_drawdown": drawdown,
        "max_drawdown_bars": drawdown_length,
        "calmar": _ratio(cagr, abs(drawdown)),
        "var_95": var,
        "cvar_95": cvar,
        "win_rate": wins / round_trips if round_trips else 0.0,
        "profit_factor": min(gross_win / max(gross_loss, 1e-12), RATIO_CAP) if round_trips else 0.0,
        "avg_trade": pnl_sum / round_trips / first if round_trips else 0.0,
        "exposure": exposure,
        "turnover": traded / mean * periods / n,
        "fees": fees / first if n_trades else 0.0,
        "financing": financing / first,
        "trades": float(n_trades),
    }


@njit(cache=True)
def _return_stats(values: np.ndarray, rf_per_period: float):
    """Of the per-bar returns of ``values``: (mean excess return, sample std, downside deviation,
    VaR 95, CVaR 95, skewness, kurtosis), then the max drawdown and its longest run in bars (see
    the module docstring; with fewer returns than a statistic needs it takes its neutral value)."""
    returns = values[1:] / values[:-1] - 1.0
    n = len(returns)
    mean_excess = std = downside = var = cvar = skewness = 0.0
    kurtosis = 3.0
    if n:
        mean = returns.mean()
        mean_excess = mean - rf_per_period
        centred = returns - mean
        squared = centred * centred
        if n > 1:
            std = math.sqrt(squared.sum() / (n - 1))
        shortfall = np.minimum(returns - rf_per_period, 0.0)
        downside = math.sqrt((shortfall * shortfall).mean())
        var = -np.percentile(returns, 5.0)
        cvar = -returns[returns <= -var].mean()
        m2 = squared.mean()
        if std > 0 and n > 2:
            skewness = (squared * centred).mean() / m2**1.5
            if n > 3:
                kurtosis = (squared * squared).mean() / m2**2
    drawdown = min(max((values / _running_max(values) - 1.0).min(), -1.0), 0.0)
    return mean_excess, std, downside, var, cvar, skewness, kurtosis, drawdown, drawdown_bars(values)


@njit(cache=True)
def _running_max(values: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    peak = -np.inf
    for k in range(len(values)):
        peak = max(peak, values[k])
        out[k] = peak
    return out


@njit(cache=True)
def _trade_stats(values: np.ndarray, positions: np.ndarray):
    """(round trips, winning ones, gross win, gross loss, total P&L, exposure) of the round trips
    in ``round_trip_pnl`` and the fraction of bars with a position."""
    pnl = round_trip_pnl(values, positions)
    wins = gross_win = gross_loss = 0.0
    for x in pnl:
        if x > 0:
            wins += 1.0
            gross_win += x
        elif x < 0:
            gross_loss -= x
    exposure = (np.abs(positions) > 1e-12).mean() if len(positions) else 0.0
    return len(pnl), wins, gross_win, gross_loss, pnl.sum(), exposure
