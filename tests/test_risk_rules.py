"""Execution and risk rules of the kernel, shared by training and backtest."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from src.backtest.sizing import with_risk_columns
from src.envs import kernels as k
from src.envs.market import MarketRules, VectorMarket
from tests.conftest import compose_config
from tests.test_kernel_properties import WINDOW, random_market


def market(df, **rules):
    base = dict(transaction_fee=0.0, slippage_bps=0.0, episode_length=10_000, equity_floor=-np.inf)
    return VectorMarket(df, ["$f1", "$f2"], 1, WINDOW, MarketRules(**{**base, **rules}))


def bars(rows):
    """A market from explicit (open, high, low, close) rows after a flat history."""
    history = [(100.0, 100.0, 100.0, 100.0)] * WINDOW
    array = np.asarray(history + rows, dtype=float)
    index = pd.date_range("2024-01-01", periods=len(array), freq="h", tz="UTC")
    return pd.DataFrame(
        {
            "$open": array[:, 0],
            "$high": array[:, 1],
            "$low": array[:, 2],
            "$close": array[:, 3],
            "$volume": 1e9,
            "$f1": 0.0,
            "$f2": 0.0,
        },
        index=index,
    )


def test_stop_fills_at_the_stop_inside_the_bar_and_at_the_open_through_a_gap():
    df = bars([(100, 101, 99, 100), (99, 100, 94, 95), (100, 100, 100, 100)])
    m = market(df, stop_loss=0.05)
    m.reset(start=WINDOW - 1)
    m.step(np.array([1.0]))  # long at 100
    m.step(np.array([1.0]))  # low 94 < stop 95: out at 95
    assert m.fills[0, k.EXIT_REASON] == k.STOP_EXIT and m.fills[0, k.EXIT_PRICE] == 95.0
    assert m.units[0] == 0.0
    gap = bars([(100, 101, 99, 100), (90, 92, 88, 91), (91, 91, 91, 91), (91, 91, 91, 91), (91, 91, 91, 91)])
    m = market(gap, stop_loss=0.05)
    m.reset(start=WINDOW - 1)
    m.step(np.array([1.0]))
    m.step(np.array([1.0]))  # opens at 90, through the 95 stop: filled at the open, not at 95
    assert m.fills[0, k.EXIT_PRICE] == 90.0


@pytest.mark.parametrize("reenter", ["next_bar", "signal"])
def test_reentry_after_a_stop(reenter):
    """next_bar: an unchanged long target re-enters at the next open; signal: it stays out until
    the target goes flat, and the next long target enters."""
    df = bars([(100, 101, 99, 100), (99, 100, 94, 95)] + [(95, 96, 94, 95)] * 4)
    m = market(df, stop_loss=0.05, reenter=reenter)
    m.reset(start=WINDOW - 1)
    m.step(np.array([1.0]))
    m.step(np.array([1.0]))
    assert m.fills[0, k.EXIT_REASON] == k.STOP_EXIT
    m.step(np.array([1.0]))
    if reenter == "next_bar":
        assert m.fills[0, k.ENTRY_UNITS] > 0 and m.fills[0, k.ENTRY_PRICE] == 95.0
        return
    assert m.units[0] == 0.0 and m.fills[0, k.ENTRY_UNITS] == 0.0
    m.step(np.array([0.0]))  # the signal leaves the stopped side
    assert m.units[0] == 0.0
    m.step(np.array([1.0]))
    assert m.units[0] > 0


def test_take_profit_and_trailing_stop_for_a_short():
    df = bars([(100, 101, 99, 100), (98, 99, 89, 90), (90, 90, 90, 90)])
    m = market(df, take_profit=0.1)
    m.reset(start=WINDOW - 1)
    m.step(np.array([-1.0]))  # short at 100
    m.step(np.array([-1.0]))  # low 89 <= 90: take profit at 90
    assert m.fills[0, k.EXIT_REASON] == k.TAKE_EXIT and m.fills[0, k.EXIT_PRICE] == 90.0
    trail = bars([(100, 100, 100, 100), (95, 96, 90, 92), (92, 97, 91, 96), (96, 96, 96, 96)])
    m = market(trail, trailing_stop=0.05)
    m.reset(start=WINDOW - 1)
    for _ in range(3):
        m.step(np.array([-1.0]))
    # short at 100; best (lowest) price 90 -> trailing stop at 94.5, hit by bar 3's high of 97
    assert m.fills[0, k.EXIT_REASON] == k.TRAIL_EXIT and m.fills[0, k.EXIT_PRICE] == pytest.approx(94.5)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000), stop=st.floats(0.01, 0.1), actions=st.lists(st.integers(0, 1), min_size=5, max_size=50)
)
def test_a_stop_never_fills_worse_than_its_level_unless_the_bar_gaps(seed, stop, actions):
    df = random_market(seed)
    m = market(df, stop_loss=stop)
    m.reset(start=WINDOW - 1)
    for action in actions:
        m.step(np.array([float(action)]))
        if m.fills[0, k.EXIT_REASON] == k.STOP_EXIT:
            level = m.risk[0, k.ENTRY] * (1 - stop)
            assert m.fills[0, k.EXIT_PRICE] == pytest.approx(min(level, df["$open"].iloc[m.t[0]]))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), cap=st.floats(0.01, 0.5), carry=st.booleans())
def test_fills_never_exceed_the_participation_cap(seed, cap, carry):
    df = random_market(seed)
    df["$volume"] = 0.002  # tiny volume: an order for all equity needs several bars
    m = market(df, max_participation=cap, carry_unfilled=carry)
    m.reset(start=WINDOW - 1)
    filled = []
    for _ in range(20):
        m.step(np.array([1.0]))
        assert abs(m.fills[0, k.ENTRY_UNITS]) <= cap * 0.002 * (1 + 1e-12)
        filled.append(m.fills[0, k.ENTRY_UNITS])
    if carry:
        assert sum(1 for f in filled if f) > 1  # the rest kept filling
    else:
        assert sum(1 for f in filled if f) == 1  # the rest was dropped


def test_drawdown_breaker_flattens_at_the_next_open_and_pauses():
    df = bars([(100, 100, 100, 100), (100, 100, 79, 80), (80, 80, 80, 80)] + [(80, 80, 80, 80)] * 5)
    m = market(df, drawdown_limit=0.1, pause_bars=3)
    m.reset(start=WINDOW - 1)
    m.step(np.array([1.0]))
    m.step(np.array([1.0]))  # -20%: the breaker trips at this close
    assert m.units[0] > 0 and m.risk[0, k.PAUSE_LEFT] == 3
    positions = []
    for _ in range(5):
        m.step(np.array([1.0]))
        positions.append(m.units[0])
    assert positions[:3] == [0.0, 0.0, 0.0] and positions[3] > 0  # flat for 3 bars, then back


def test_borrow_is_charged_on_short_notional_each_bar():
    df = bars([(100, 100, 100, 100)] * 4)
    m = market(df, borrow_per_bar=0.001)
    m.reset(start=WINDOW - 1)
    m.step(np.array([-1.0]))
    m.step(np.array([-1.0]))
    assert m.fills[0, k.FINANCING] == pytest.approx(0.001 * 1.0 * 100 * abs(m.units[0]) / 1.0)
    assert m.equity[0] < 1.0


def test_leverage_cap_bounds_the_sized_position():
    df = bars([(100, 100, 100, 100)] * 3).assign(**{"@size": 5.0})
    m = market(df, max_leverage=2.0)
    m.reset(start=WINDOW - 1)
    m.step(np.array([1.0]))
    assert m.account[0, 0] == pytest.approx(2.0)


@pytest.mark.parametrize("method", ["fixed_fraction", "vol_target", "kelly"])
def test_sizing_uses_past_bars_only(method):
    cfg = OmegaConf.merge(compose_config().backtest, {"sizing": {"method": method}, "stops": {"unit": "atr"}})
    df = random_market(3, n_bars=300)
    t = 200
    future = df.copy()
    future.iloc[t + 1 :, :4] *= np.random.default_rng(0).uniform(0.5, 2, size=(len(df) - t - 1, 1))
    a, b = with_risk_columns(df, cfg), with_risk_columns(future, cfg)
    pd.testing.assert_frame_equal(a.iloc[: t + 1][["@size", "@stop_unit"]], b.iloc[: t + 1][["@size", "@stop_unit"]])


def test_training_env_uses_the_backtests_rules(market_df):
    from src import registry
    from src.envs.torchrl_env import market_rules

    cfg = compose_config(["backtest=risk_managed"])
    env = registry.build("env", cfg.env, market_df, seed=0, risk=cfg.backtest)
    assert env.market.rules == market_rules(cfg.env, cfg.backtest, market_df.index)
    assert env.market.rules.stop_loss == 3.0 and env.market.rules.max_participation == 0.1


def test_low_liquidity_makes_the_participation_cap_bind(market_df):
    from src import registry
    from src.agents.baselines import BuyAndHold
    from src.scenarios import apply_scenarios

    cfg = compose_config(
        ["scenario=low_liquidity", "backtest.initial_cash=2e7", "backtest.execution.max_participation=0.05"]
    )
    bars_df = market_df.iloc[:400]
    env = registry.build("env", cfg.env, bars_df, seed=0, num_envs=1)
    backtester = registry.build("backtest", cfg.backtest, cfg.env, env.actions)
    normal = backtester.run(BuyAndHold(env.actions), bars_df).trades
    thin, _ = apply_scenarios(bars_df, 0, cfg.scenario)
    stressed = backtester.run(BuyAndHold(env.actions), thin).trades
    assert len(stressed) > len(normal) and stressed.partial.iloc[0]  # filled over several bars
    orders = stressed[stressed.reason == "signal"]  # the end-of-backtest close is not capped
    last_closed = thin["$volume"].shift().reindex(orders.timestamp).to_numpy()  # known at the decision
    assert (orders.units.abs().to_numpy() <= 0.05 * last_closed * (1 + 1e-9)).all()
