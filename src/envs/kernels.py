"""The numba trading kernel: one call steps N independent envs over one shared price series.

Timing (the honesty rule): at step k env i has seen bars up to and including ``t[i]`` (its
observation window ends at the close of ``t[i]``). The action decided there is filled at the
*next* bar's open, ``open[t+1]``, moved against the trade by the slippage, and charged
``transaction_fee`` on the traded notional. Equity is then marked at ``close[t+1]``.

Units: prices in quote currency; ``cash`` and ``equity`` in quote currency (start: 1.0 per env, the
backtest scales); ``units`` in base currency (negative = short); targets are fractions of equity.

Rewards (``reward_kind``): 0 log return of equity; 1 differential Sharpe ratio (Moody & Saffell
1998) with EMA rate ``reward_param``; 2 log return minus ``reward_param`` x the increase of the
drawdown from the episode's equity peak.
"""
import numpy as np
from numba import njit

MIN_EQUITY = 1e-12  # equity is clamped here inside the log reward when an env is wiped out
LOG_RETURN, DIFFERENTIAL_SHARPE, DRAWDOWN_PENALTY = 0, 1, 2


@njit(cache=True, error_model="numpy")
def _xorshift(state: np.ndarray, i: int) -> np.uint64:
    """Advance env i's xorshift64* generator; returns the next 64-bit draw."""
    x = state[i]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    state[i] = x
    return x * np.uint64(2685821657736338717)


@njit(cache=True, error_model="numpy")
def _write_obs(i, t, features, window, units, close, equity, obs, account):
    """obs[i] = the window of feature rows t-window+1 .. t; account[i] = (position fraction,
    log equity). ``features`` is the (T, F) matrix flattened row-major and ``obs`` the
    (N, window, F) buffer viewed as (N, window * F), so the window is one contiguous copy."""
    safe_equity = max(equity[i], MIN_EQUITY)
    width = obs.shape[1]
    first = (t - window + 1) * (width // window)
    obs[i, :] = features[first : first + width]
    account[i, 0] = units[i] * close[t] / safe_equity
    account[i, 1] = np.log(safe_equity)


@njit(cache=True, error_model="numpy")
def _reset_env(i, start, features, close, window, t, cash, units, held, equity, steps, stats,
               obs, account):
    """Env i starts at bar ``start`` with all cash (1.0), no position and fresh reward stats."""
    t[i] = start
    cash[i] = 1.0
    units[i] = 0.0
    held[i] = 0.0
    equity[i] = 1.0
    steps[i] = 0
    stats[i, 0] = 1.0  # equity peak
    stats[i, 1] = 0.0  # EMA of returns (differential Sharpe's A)
    stats[i, 2] = 0.0  # EMA of squared returns (B)
    _write_obs(i, start, features, window, units, close, equity, obs, account)


@njit(cache=True, error_model="numpy")
def _draw_start(rng_state, i, low, high):
    """A start bar uniform in [low, high) from env i's own generator."""
    return low + np.int64(_xorshift(rng_state, i) % np.uint64(max(high - low, 1)))


@njit(cache=True, error_model="numpy")
def reset_envs(mask, starts, features, close, window, t, cash, units, held, equity, steps, stats,
               obs, account):
    """Reset every env with ``mask[i]`` at bar ``starts[i]``."""
    for i in range(mask.shape[0]):
        if mask[i]:
            _reset_env(i, starts[i], features, close, window, t, cash, units, held, equity,
                       steps, stats, obs, account)


@njit(cache=True, error_model="numpy")
def sample_starts(rng_state, mask, low, high, starts):
    """For each env with ``mask[i]``, a start bar uniform in [low, high)."""
    for i in range(mask.shape[0]):
        if mask[i]:
            starts[i] = _draw_start(rng_state, i, low, high)


@njit(cache=True, error_model="numpy")
def _reward(kind, param, previous_equity, new_equity, stats, i):
    """The step's reward; updates env i's reward statistics."""
    log_return = np.log(max(new_equity, MIN_EQUITY) / max(previous_equity, MIN_EQUITY))
    if kind == DIFFERENTIAL_SHARPE:
        r = new_equity / max(previous_equity, MIN_EQUITY) - 1.0
        a, b = stats[i, 1], stats[i, 2]
        delta_a, delta_b = r - a, r * r - b
        variance = b - a * a
        stats[i, 1] = a + param * delta_a
        stats[i, 2] = b + param * delta_b
        return (b * delta_a - 0.5 * a * delta_b) / variance ** 1.5 if variance > 1e-12 else 0.0
    if kind == DRAWDOWN_PENALTY:
        peak = stats[i, 0]
        before = 1.0 - previous_equity / peak
        peak = max(peak, new_equity)
        stats[i, 0] = peak
        return log_return - param * max(1.0 - new_equity / peak - before, 0.0)
    return log_return


@njit(cache=True, error_model="numpy")
def step_envs(targets, open_, close, features, window, transaction_fee, slippage, episode_length,
              equity_floor, rebalance_threshold, reward_kind, reward_param, auto_reset, rng_state,
              start_low, start_high, t, cash, units, held, equity, steps, stats, obs, account,
              reward, terminated, truncated, fill_price, traded_units, fee_paid):
    """Advance every env one bar towards its target position (fraction of equity).

    A target within ``rebalance_threshold`` of the one held trades nothing (units are kept, so no
    rebalancing churn). Writes reward, terminated (equity under ``equity_floor``), truncated
    (episode length reached, or no next bar to fill at), and this bar's fill price, traded units
    and fee (zeros when nothing traded). With ``auto_reset`` a finished env restarts at once at a
    random bar in [start_low, start_high) and ``obs`` holds its new episode's first window;
    without it the caller must reset finished envs before stepping them again.
    """
    last_bar = close.shape[0] - 1
    for i in range(targets.shape[0]):
        nxt = t[i] + 1
        previous_equity = equity[i]
        traded = 0.0
        price = 0.0
        fee = 0.0
        if abs(targets[i] - held[i]) > rebalance_threshold:
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
        reward[i] = _reward(reward_kind, reward_param, previous_equity, equity[i], stats, i)
        terminated[i] = equity[i] < equity_floor
        truncated[i] = (steps[i] >= episode_length or nxt >= last_bar) and not terminated[i]
        fill_price[i] = price
        traded_units[i] = traded
        fee_paid[i] = fee
        if auto_reset and (terminated[i] or truncated[i]):
            _reset_env(i, _draw_start(rng_state, i, start_low, start_high), features, close,
                       window, t, cash, units, held, equity, steps, stats, obs, account)
        else:
            _write_obs(i, nxt, features, window, units, close, equity, obs, account)
