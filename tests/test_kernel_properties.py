"""Hypothesis properties of the numba env kernel (through VectorMarket, which only holds arrays)."""

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from src.envs.kernels import ENTRY_FEE, ENTRY_PRICE, ENTRY_UNITS
from src.envs.market import MarketRules, VectorMarket

WINDOW = 4
LEVELS = np.array([-1.0, 0.0, 1.0])


def random_market(seed: int, n_bars: int = 64) -> pd.DataFrame:
    """A small random OHLC path (moves up to ~10% a bar) with two random feature columns."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, n_bars)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.01, n_bars))
    df = pd.DataFrame(
        {
            "$open": open_,
            "$high": np.maximum(open_, close) * 1.01,
            "$low": np.minimum(open_, close) * 0.99,
            "$close": close,
            "$volume": rng.uniform(1, 10, n_bars),
            "$f1": rng.normal(size=n_bars),
            "$f2": rng.normal(size=n_bars),
        },
        index=pd.date_range("2024-01-01", periods=n_bars, freq="h", tz="UTC"),
    )
    return df


def make_market(df, num_envs=1, fee=0.001, slippage_bps=2.0, seed=0, episode_length=10_000, auto_reset=False, **rules):
    rules = MarketRules(
        transaction_fee=fee, slippage_bps=slippage_bps, episode_length=episode_length, equity_floor=-np.inf, **rules
    )
    return VectorMarket(df, ["$f1", "$f2"], num_envs, WINDOW, rules, seed=seed, auto_reset=auto_reset)


actions_strategy = st.lists(st.integers(0, 2), min_size=1, max_size=50)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n_steps=st.integers(1, 55))
def test_flat_policy_without_costs_keeps_equity_constant(seed, n_steps):
    market = make_market(random_market(seed), num_envs=3, fee=0.0, slippage_bps=0.0, seed=seed)
    market.reset()
    for _ in range(n_steps):
        if (market.t >= market.n_bars - 1).any():
            break
        market.step(np.zeros(3))
        assert np.all(market.equity == 1.0) and np.all(market.reward == 0.0)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), actions=actions_strategy, fee=st.floats(1e-5, 0.02), slippage_bps=st.floats(0, 50))
def test_costs_never_make_equity_larger(seed, actions, fee, slippage_bps):
    df = random_market(seed)
    free, costly = make_market(df, fee=0.0, slippage_bps=0.0), make_market(df, fee=fee, slippage_bps=slippage_bps)
    free.reset(start=WINDOW - 1)
    costly.reset(start=WINDOW - 1)
    for action in actions:
        free.step(LEVELS[[action]])
        costly.step(LEVELS[[action]])
        if free.equity[0] <= 0:  # a wiped-out account: the comparison has no meaning after it
            break
        assert costly.equity[0] <= free.equity[0] * (1 + 1e-12)
        if free.fills[0, ENTRY_UNITS] != 0:
            assert costly.fills[0, ENTRY_FEE] > 0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), decision_step=st.integers(0, 40), noise_seed=st.integers(0, 99))
def test_action_at_t_cannot_see_after_t(seed, decision_step, noise_seed):
    """Changing every bar after t leaves the observation and decision at t, and the fill at
    t+1's open, unchanged. The policy trades on the sign of its last feature row."""
    df = random_market(seed)
    t = WINDOW - 1 + decision_step
    future = df.copy()
    noise = np.random.default_rng(noise_seed).uniform(0.5, 2.0, size=(len(df), 7))
    future.iloc[t + 1 :] = future.iloc[t + 1 :] * noise[t + 1 :]
    future.iloc[t + 1, 0] = df.iloc[t + 1, 0]  # the open of t+1 is the fill price: it is not "after t"
    records = []
    for frame in (df, future):
        market = make_market(frame)
        market.reset(start=WINDOW - 1)
        for _ in range(decision_step):
            market.step(LEVELS[[1 + int(np.sign(market.obs[0, -1, 0]))]])
        decision = LEVELS[[1 + int(np.sign(market.obs[0, -1, 0]))]]
        observation = market.obs.copy()
        market.step(decision)
        records.append((observation, decision, market.fills[0, ENTRY_PRICE], market.fills[0, ENTRY_UNITS]))
    (obs_a, decision_a, fill_a, units_a), (obs_b, decision_b, fill_b, units_b) = records
    assert np.array_equal(obs_a, obs_b)
    assert np.array_equal(decision_a, decision_b)
    assert fill_a == fill_b and units_a == units_b


def test_fill_is_next_bar_open_plus_slippage():
    df = random_market(0)
    market = make_market(df, fee=0.001, slippage_bps=10.0)
    market.reset(start=WINDOW - 1)
    market.step(np.array([1.0]))
    assert market.t[0] == WINDOW
    assert market.fills[0, ENTRY_PRICE] == df["$open"].iloc[WINDOW] * (1 + 10.0 / 1e4)
    assert np.isclose(market.fills[0, ENTRY_FEE], market.fills[0, ENTRY_UNITS] * market.fills[0, ENTRY_PRICE] * 0.001)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_same_seed_gives_identical_trajectory(seed):
    def trajectory():
        market = make_market(random_market(seed), num_envs=8, seed=seed, episode_length=7)
        actions = np.random.default_rng(seed)
        market.reset()
        out = []
        for _ in range(40):
            market.step(LEVELS[actions.integers(0, 3, size=8)])
            out.append(np.c_[market.t, market.equity, market.reward, market.units])
            done = market.terminated | market.truncated
            if done.any():
                market.reset(done)
        return np.stack(out)

    assert np.array_equal(trajectory(), trajectory())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), episode_length=st.integers(1, 20))
def test_auto_reset_in_kernel_matches_explicit_reset(seed, episode_length):
    """Auto-reset inside the kernel draws the same starts as resetting finished envs from Python."""
    df = random_market(seed)
    auto = make_market(df, num_envs=5, seed=seed, episode_length=episode_length, auto_reset=True)
    manual = make_market(df, num_envs=5, seed=seed, episode_length=episode_length)
    actions = np.random.default_rng(seed).integers(0, 3, size=(60, 5))
    auto.reset()
    manual.reset()
    for row in actions:
        auto.step(LEVELS[row])
        manual.step(LEVELS[row])
        assert np.array_equal(auto.reward, manual.reward)
        done = manual.terminated | manual.truncated
        assert np.array_equal(done, auto.terminated | auto.truncated)
        manual.reset(done)
        assert np.array_equal(auto.t, manual.t) and np.array_equal(auto.obs, manual.obs)
        assert (auto.steps <= episode_length).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), actions=actions_strategy, penalty=st.floats(0, 5))
def test_drawdown_penalty_never_exceeds_log_return(seed, actions, penalty):
    df = random_market(seed)
    plain, penalised = make_market(df), make_market(df, reward="drawdown_penalty", reward_param=penalty)
    plain.reset(start=WINDOW - 1)
    penalised.reset(start=WINDOW - 1)
    for action in actions:
        plain.step(LEVELS[[action]])
        penalised.step(LEVELS[[action]])
        assert penalised.reward[0] <= plain.reward[0] + 1e-7
        assert penalised.equity[0] == plain.equity[0]  # the reward shapes learning, not fills


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), actions=actions_strategy)
def test_differential_sharpe_is_finite(seed, actions):
    market = make_market(random_market(seed), reward="differential_sharpe", reward_param=0.05)
    market.reset(start=WINDOW - 1)
    for action in actions:
        market.step(LEVELS[[action]])
        assert np.isfinite(market.reward[0])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), nudges=st.lists(st.floats(-0.049, 0.049), min_size=1, max_size=30))
def test_targets_inside_rebalance_band_never_trade(seed, nudges):
    market = make_market(random_market(seed), rebalance_threshold=0.05)
    market.reset(start=WINDOW - 1)
    market.step(np.array([0.5]))
    units = market.units[0]
    for nudge in nudges:
        market.step(np.array([0.5 + nudge]))
        assert market.fills[0, ENTRY_UNITS] == 0.0 and market.units[0] == units
