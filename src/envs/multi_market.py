"""A market several agents trade at once: E parallel markets x K agents, one numba call per bar.

Each market follows the exogenous bars (the ``data`` group) times its own price *level*, which
the agents' trading moves (an Almgren-Chriss style split into temporary and permanent impact):

1. At bar t's close every agent k decides a target (fraction of its equity); it is sized with bar
   t's ``@size`` / ``@short_size`` within ``max_leverage`` and turned into an order ``x_k`` by the
   single-agent rule (``kernels._order_units``, fixed slippage and fee priced in).
2. The orders net: ``X = sum_k x_k``; opposing orders between agents cancel before any impact.
   With ``q = X * capital / volume[t]`` (the net order's signed share of the last closed bar's
   volume), every order fills at ``P = open[t+1] * level * (1 + eta * sign(q) * sqrt(|q|))``,
   ``eta`` = ``temporary_impact``; each agent also pays its own fixed slippage (``slippage_bps``
   against its own trade) and ``transaction_fee`` on its own filled notional. The impact an agent
   pays is ``x_k * (P - open')``: positive with the net flow, negative (earned) against it.
3. Permanent impact: ``level *= max(1 + gamma * q, 0.01)`` right after the fill (``gamma`` =
   ``permanent_impact``), so bar t+1's close and every later bar are moved.
4. Equity is marked at ``close[t+1] * level``; rewards as in the single-agent kernel.

Features are computed on the exogenous path: the agents see their own effect through their
accounts and, with ``observe_flow``, the previous bar's net order flow. Any agent's equity under
``equity_floor`` ends its market's episode (for all its agents). With both impacts 0 every agent's
trajectory equals the single-agent kernel's on the same actions, bit for bit.

Arrays: per market (E,): ``t``, ``steps``, ``level``, ``flow`` (last net order's share of
volume), ``rng_state``; per agent (E*K,), index ``e * K + k``: ``cash``, ``units``,
``requested``, ``equity``, ``stats`` (E*K, 3), ``paid`` (E*K, 3) this bar's fee, slippage and
impact (quote currency per unit of starting equity), ``traded`` (E*K,) this bar's order units;
observations ``obs`` (E, window * F) per market and ``account`` (E*K, 3) per agent (position
fraction, log equity, last net flow).
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numba import njit, prange

from src.envs import kernels
from src.envs.market import PARALLEL_MIN_ENVS, EvolvingArrays, MarketRules, market_bars

FEE_PAID, SLIPPAGE_PAID, IMPACT_PAID = range(3)
N_ACCOUNT = 3


@dataclass(frozen=True)
class Impact:
    """Market impact of the agents' net order flow (dimensionless coefficients)."""

    temporary: float = 0.0  # eta: price moves eta x sqrt(|net share of volume|) for the fill
    permanent: float = 0.0  # gamma: the level moves gamma x (net share of volume) for good


@njit(cache=True, error_model="numpy")
def _write_market(e, t, features, window, obs):
    width = obs.shape[1]
    kernels.copy_window(obs[e], features, (t - window + 1) * (width // window), False)


@njit(cache=True, error_model="numpy")
def _write_account(j, units, price, equity, flow, account):
    safe = max(equity[j], kernels.MIN_EQUITY)
    account[j, 0] = units[j] * price / safe
    account[j, 1] = np.log(safe)
    account[j, 2] = flow


@njit(cache=True, error_model="numpy")
def _reset_market(
    e, start, K, bars, features, window, t, steps, level, flow, cash, units, requested, equity, stats, obs, account
):
    t[e], steps[e], level[e], flow[e] = start, 0, 1.0, 0.0
    _write_market(e, start, features, window, obs)
    for k in range(K):
        j = e * K + k
        cash[j], units[j], requested[j], equity[j] = 1.0, 0.0, 0.0, 1.0
        stats[j, 0], stats[j, 1], stats[j, 2] = 1.0, 0.0, 0.0
        _write_account(j, units, bars[start, kernels.CLOSE], equity, 0.0, account)


@njit(cache=True, error_model="numpy", parallel=True)
def reset_markets(
    mask, starts, K, bars, features, window, t, steps, level, flow, cash, units, requested, equity, stats, obs, account
):
    """Reset every market with ``mask[e]`` at bar ``starts[e]``: level 1, all agents in cash."""
    for e in prange(mask.shape[0]):
        if mask[e]:
            _reset_market(
                e,
                starts[e],
                K,
                bars,
                features,
                window,
                t,
                steps,
                level,
                flow,
                cash,
                units,
                requested,
                equity,
                stats,
                obs,
                account,
            )


@njit(cache=True, error_model="numpy", inline="always")
def _step_market(
    e,
    targets,
    K,
    bars,
    features,
    window,
    rules,
    eta,
    gamma,
    auto_reset,
    rng_state,
    start_low,
    start_high,
    t,
    steps,
    level,
    flow,
    cash,
    units,
    requested,
    equity,
    stats,
    obs,
    account,
    reward,
    terminated,
    truncated,
    paid,
    traded,
):
    """Advance market e one bar (see the module docstring for the order of events)."""
    last_bar = bars.shape[0] - 1
    now, nxt = t[e], t[e] + 1
    lev = level[e]
    o = bars[nxt, kernels.OPEN] * lev
    last_volume = bars[now, kernels.VOLUME]
    slip_scale, fee_scale = bars[nxt, kernels.SLIPPAGE_SCALE], bars[nxt, kernels.FEE_SCALE]
    net = 0.0
    for k in range(K):
        j = e * K + k
        target = targets[j]
        size = bars[now, kernels.SIZE] if target >= 0 else bars[now, kernels.SHORT_SIZE]
        cap = rules[kernels.MAX_LEVERAGE]
        sized = min(max(target * size, -cap), cap)
        x = 0.0
        if abs(sized - requested[j]) > rules[kernels.REBALANCE] or (sized == 0.0 and units[j] != 0.0):
            x = kernels._order_units(
                rules, sized, units[j], cash[j] + units[j] * o, o, last_volume, slip_scale, fee_scale
            )
            requested[j] = sized
        traded[j] = x
        net += x
    share = net * rules[kernels.CAPITAL] / last_volume if last_volume > 0 else 0.0
    impact_price = o * (1.0 + eta * np.sign(share) * np.sqrt(abs(share)))
    for k in range(K):
        j = e * K + k
        x = traded[j]
        paid[j, 0], paid[j, 1], paid[j, 2] = 0.0, 0.0, 0.0
        if x != 0.0:
            price = impact_price * (1.0 + rules[kernels.SLIPPAGE] * slip_scale * np.sign(x))
            fee = abs(x) * price * rules[kernels.FEE] * fee_scale
            cash[j] -= x * price + fee
            units[j] += x
            paid[j, FEE_PAID] = fee
            paid[j, SLIPPAGE_PAID] = x * (price - impact_price)
            paid[j, IMPACT_PAID] = x * (impact_price - o)
    lev = lev * max(1.0 + gamma * share, 0.01)
    level[e], flow[e] = lev, share
    c = bars[nxt, kernels.CLOSE] * lev
    t[e] = nxt
    steps[e] += 1
    wiped = False
    for k in range(K):
        j = e * K + k
        previous = equity[j]
        equity[j] = cash[j] + units[j] * c
        reward[j] = kernels._reward(
            int(rules[kernels.REWARD_KIND]), rules[kernels.REWARD_PARAM], previous, equity[j], stats, j
        )
        wiped = wiped or equity[j] < rules[kernels.EQUITY_FLOOR]
    terminated[e] = wiped
    truncated[e] = (steps[e] >= rules[kernels.EPISODE_LENGTH] or nxt >= last_bar) and not wiped
    if auto_reset and (terminated[e] or truncated[e]):
        start = kernels._draw_start(rng_state, e, start_low, start_high)
        _reset_market(
            e,
            start,
            K,
            bars,
            features,
            window,
            t,
            steps,
            level,
            flow,
            cash,
            units,
            requested,
            equity,
            stats,
            obs,
            account,
        )
    else:
        _write_market(e, nxt, features, window, obs)
        for k in range(K):
            _write_account(e * K + k, units, c, equity, share, account)


@njit(cache=True, error_model="numpy")
def step_markets(
    targets,
    K,
    bars,
    features,
    window,
    rules,
    eta,
    gamma,
    auto_reset,
    rng_state,
    start_low,
    start_high,
    t,
    steps,
    level,
    flow,
    cash,
    units,
    requested,
    equity,
    stats,
    obs,
    account,
    reward,
    terminated,
    truncated,
    paid,
    traded,
):
    """Advance every market one bar; ``targets`` (E*K,) fractions of equity.
    ``terminated``/``truncated`` are per market."""
    for e in range(t.shape[0]):
        _step_market(
            e,
            targets,
            K,
            bars,
            features,
            window,
            rules,
            eta,
            gamma,
            auto_reset,
            rng_state,
            start_low,
            start_high,
            t,
            steps,
            level,
            flow,
            cash,
            units,
            requested,
            equity,
            stats,
            obs,
            account,
            reward,
            terminated,
            truncated,
            paid,
            traded,
        )


@njit(cache=True, error_model="numpy", parallel=True)
def step_markets_parallel(
    targets,
    K,
    bars,
    features,
    window,
    rules,
    eta,
    gamma,
    auto_reset,
    rng_state,
    start_low,
    start_high,
    t,
    steps,
    level,
    flow,
    cash,
    units,
    requested,
    equity,
    stats,
    obs,
    account,
    reward,
    terminated,
    truncated,
    paid,
    traded,
):
    """``step_markets`` with the markets spread over numba's threads (bit-identical)."""
    for e in prange(t.shape[0]):
        _step_market(
            e,
            targets,
            K,
            bars,
            features,
            window,
            rules,
            eta,
            gamma,
            auto_reset,
            rng_state,
            start_low,
            start_high,
            t,
            steps,
            level,
            flow,
            cash,
            units,
            requested,
            equity,
            stats,
            obs,
            account,
            reward,
            terminated,
            truncated,
            paid,
            traded,
        )


class MultiMarket(EvolvingArrays):
    """E markets of K agents each over ``df`` (OHLCV + ``feature_columns``); arrays as in the
    module docstring, ``obs`` viewed as (E, window, F) float32, ``account`` (E*K, 3) float32."""

    STATE = (
        "t",
        "steps",
        "starts",
        "level",
        "flow",
        "terminated",
        "truncated",
        "cash",
        "units",
        "requested",
        "equity",
        "traded",
        "stats",
        "paid",
        "reward",
        "obs",
        "account",
        "rng_state",
    )

    def __init__(
        self,
        df: pd.DataFrame,
        feature_columns: list[str],
        num_markets: int,
        num_agents: int,
        window_size: int,
        rules: MarketRules,
        impact: Impact,
        seed: int = 0,
        auto_reset: bool = False,
    ):
        if len(df) < window_size + 2:
            raise ValueError(f"{len(df)} bars cannot fill a window of {window_size} plus one step")
        if (
            rules.impact
            or rules.max_participation
            or rules.stop_loss
            or rules.take_profit
            or rules.trailing_stop
            or rules.drawdown_limit
            or rules.borrow_per_bar
            or rules.funding_per_bar
        ):
            raise ValueError(
                "the multi-agent market has its own impact (env.impact) and no stops, "
                "breaker, participation cap or financing; use backtest=default"
            )
        self.index, self.bars = df.index, market_bars(df)
        self.features = np.ascontiguousarray(df[feature_columns].to_numpy(dtype=np.float32))
        self.E, self.K, self.window, self.auto_reset = num_markets, num_agents, window_size, auto_reset
        self.rules, self._rules, self.impact = rules, rules.vector(), impact
        self.start_low = window_size - 1
        self.start_high = max(len(df) - 1 - rules.episode_length, self.start_low + 1)
        E, N = num_markets, num_markets * num_agents
        self.t, self.steps, self.starts = (np.zeros(E, np.int64) for _ in range(3))
        self.level, self.flow = np.ones(E), np.zeros(E)
        self.terminated, self.truncated = np.zeros(E, np.bool_), np.zeros(E, np.bool_)
        self.cash, self.units, self.requested, self.equity, self.traded = (np.zeros(N) for _ in range(5))
        self.stats, self.paid = np.zeros((N, 3)), np.zeros((N, 3))
        self.reward = np.zeros(N, np.float32)
        self.obs = np.zeros((E, window_size, len(feature_columns)), np.float32)
        self.account = np.zeros((N, N_ACCOUNT), np.float32)
        self._flat_features, self._flat_obs = self.features.reshape(-1), self.obs.reshape(E, -1)
        self.rng_state = np.zeros(E, np.uint64)
        self.seed(seed)

    def seed(self, seed: int) -> None:
        words = np.random.SeedSequence(seed).generate_state(self.E, dtype=np.uint64)
        self.rng_state[:] = words | np.uint64(1)

    def reset(self, mask: np.ndarray | None = None, start: int | None = None) -> None:
        """Reset markets in ``mask`` (all by default) at bar ``start`` or at seeded random bars."""
        mask = np.ones(self.E, np.bool_) if mask is None else mask
        if start is None:
            kernels.sample_starts(self.rng_state, mask, self.start_low, self.start_high, self.starts)
        else:
            self.starts[mask] = start
        reset_markets(
            mask,
            self.starts,
            self.K,
            self.bars,
            self._flat_features,
            self.window,
            self.t,
            self.steps,
            self.level,
            self.flow,
            self.cash,
            self.units,
            self.requested,
            self.equity,
            self.stats,
            self._flat_obs,
            self.account,
        )

    def step(self, targets: np.ndarray) -> None:
        """All agents towards ``targets`` (E*K,) float64, fractions of equity."""
        step = step_markets_parallel if self.E >= PARALLEL_MIN_ENVS else step_markets
        step(
            targets,
            self.K,
            self.bars,
            self._flat_features,
            self.window,
            self._rules,
            self.impact.temporary,
            self.impact.permanent,
            self.auto_reset,
            self.rng_state,
            self.start_low,
            self.start_high,
            self.t,
            self.steps,
            self.level,
            self.flow,
            self.cash,
            self.units,
            self.requested,
            self.equity,
            self.stats,
            self._flat_obs,
            self.account,
            self.reward,
            self.terminated,
            self.truncated,
            self.paid,
            self.traded,
        )

    def prices(self) -> np.ndarray:
        """(E,) this bar's close as the agents moved it (exogenous close x level)."""
        return self.bars[self.t, kernels.CLOSE] * self.level
