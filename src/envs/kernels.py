"""The numba trading kernel: one call steps N independent envs over one shared price series.

Timing (the honesty rule): at step k env i has seen bars up to and including ``t[i]`` (its
observation window ends at the close of ``t[i]``). The action decided there is filled at the
*next* bar's open, ``open[t+1]``, moved against the trade by the slippage, and charged
``transaction_fee`` on the traded notional. Equity is then marked at ``close[t+1]``.

Units: prices in quote currency; ``cash`` and ``equity`` in quote currency (start: 1.0 per env, the
backtest scales); ``units`` in base currency (negative = short); targets are fractions of equity.
"""
import numpy as np
from numba import njit

MIN_EQUITY = 1e-12  # equity is clamped here inside the log reward when an env is wiped out


@njit(cache=True)
def _xorshift(state: np.ndarray, i: int) -> np.uint64:
    """Advance env i's xorshift64* generator; returns the next 64-bit draw."""
    x = state[i]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    state[i] = x
    return x * np.uint64(2685821657736338717)


@njit(cache=True)
def _write_obs(i, t, features, window, units, close, equity, obs, account):
    """obs[i] = features[t-window+1 .. t] (window, F); account[i] = (position fraction, log equity)."""
    safe_equity = max(equity[i], MIN_EQUITY)
    obs[i, :, :] = features[t - window + 1 : t + 1, :]
    account[i, 0] = units[i] * close[t] / safe_equity
    account[i, 1] = np.log(safe_equity)


@njit(cache=True)
def reset_envs(mask, starts, features, close, window, t, cash, units, held, equity, steps, obs, account):
    """Start a new episode at bar ``starts[i]`` for every env with ``mask[i]``: all cash, no position."""
    for i in range(mask.shape[0]):
        if mask[i]:
            t[i] = starts[i]
            cash[i] = 1.0
            units[i] = 0.0
            held[i] = 0.0
            equity[i] = 1.0
            steps[i] = 0
            _write_obs(i, t[i], features, window, units, close, equity, obs, account)


@njit(cache=True)
def sample_starts(rng_state, mask, low, high, starts):
    """For each env with ``mask[i]``, a start bar uniform in [low, high) from env i's own generator."""
    span = np.uint64(max(high - low, 1))
    for i in range(mask.shape[0]):
        if mask[i]:
            starts[i] = low + np.int64(_xorshift(rng_state, i) % span)


@njit(cache=True)
def step_envs(targets, open_, close, features, window, transaction_fee, slippage, episode_length,
              equity_floor, t, cash, units, held, equity, steps, obs, account,
              reward, terminated, truncated, fill_price, traded_units, fee_paid):
    """Advance every env one bar towards its target position (fraction of equity).

    A target equal to the one held trades nothing (units are kept, so no rebalancing churn).
    Writes reward (log equity change), terminated (equity under ``equity_floor``), truncated
    (episode length reached or no next bar to fill at), and this bar's fill price, traded units
    and fee (zeros when nothing traded). Envs already at the last bar must be reset first.
    """
    last_bar = close.shape[0] - 1
    for i in range(targets.shape[0]):
        nxt = t[i] + 1
        previous_equity = equity[i]
        traded = 0.0
        price = 0.0
        fee = 0.0
        if targets[i] != held[i]:
            mark = cash[i] + units[i] * open_[nxt]  # equity at the open, before trading
            traded = targets[i] * max(mark, 0.0) / open_[nxt] - units[i]
            price = open_[nxt] * (1.0 + slippage * np.sign(traded))
            fee = abs(traded) * price * transaction_fee
            cash[i] -= traded * price + fee
            units[i] += traded
            held[i] = targets[i]
        t[i] = nxt
        steps[i] += 1
        equity[i] = cash[i] + units[i] * close[nxt]
        reward[i] = np.log(max(equity[i], MIN_EQUITY) / max(previous_equity, MIN_EQUITY))
        terminated[i] = equity[i] < equity_floor
        truncated[i] = (steps[i] >= episode_length or nxt >= last_bar) and not terminated[i]
        fill_price[i] = price
        traded_units[i] = traded
        fee_paid[i] = fee
        _write_obs(i, nxt, features, window, units, close, equity, obs, account)
