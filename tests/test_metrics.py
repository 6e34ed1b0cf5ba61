"""Metrics against hand-computed values, plus invariants."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from src.backtest.metrics import compute_metrics
from src.data.timeframes import periods_per_year


def curve(values, freq="D"):
    return pd.Series(values, index=pd.date_range("2024-01-01", periods=len(values), freq=freq, tz="UTC"))


def test_hand_computed_values():
    # returns +10%, -10%, +10%: mean 1/30, sample std sqrt(1/75), downside rms sqrt(1/300)
    fills = pd.DataFrame({"units": [1.0, -1.0], "price": [100.0, 99.0], "fee": [0.1, 0.1]})
    financing = np.array([0.0, 0.2, 0.3, 0.0])  # charged in the two bars held
    m = compute_metrics(
        curve([100.0, 110.0, 99.0, 108.9]), np.array([0, 1, 1, 0]), fills, periods=252, financing=financing
    )
    assert m["total_return"] == pytest.approx(0.089)
    assert m["sharpe"] == pytest.approx((1 / 30) / np.sqrt(1 / 75) * np.sqrt(252))
    assert m["sortino"] == pytest.approx((1 / 30) / np.sqrt(1 / 300) * np.sqrt(252))
    assert m["max_drawdown"] == pytest.approx(-0.1)
    assert m["cagr"] == pytest.approx(1.089 ** (252 / 3) - 1)
    assert m["calmar"] == pytest.approx(m["cagr"] / 0.1)
    assert m["volatility"] == pytest.approx(np.sqrt(1 / 75) * np.sqrt(252))
    assert m["trades"] == 2 and m["exposure"] == 0.5
    assert m["max_drawdown_bars"] == 2  # bars 2 and 3 are below the peak of bar 1
    assert m["var_95"] == pytest.approx(-np.percentile([0.1, -0.1, 0.1], 5))
    assert m["cvar_95"] == pytest.approx(0.1)  # the only return at or below the 5% quantile
    # one round trip, held over bars 1-2 and closed at bar 3's open: P&L 108.9 - 100
    assert m["win_rate"] == 1.0 and m["avg_trade"] == pytest.approx(0.089)
    assert m["profit_factor"] == 1e6  # no losing trade: capped
    assert m["turnover"] == pytest.approx((100 + 99) / np.mean([100, 110, 99, 108.9]) * 252 / 3)
    assert m["fees"] == pytest.approx(0.002) and m["financing"] == pytest.approx(0.005)


def test_periods_per_year_from_bar_spacing():
    assert periods_per_year(curve(np.ones(1000), "h").index) == pytest.approx(8766)
    assert periods_per_year(curve(np.ones(100), "D").index) == pytest.approx(365.25)


def test_constant_equity_is_defined():
    m = compute_metrics(curve(np.full(50, 100.0)), np.zeros(50), None, periods=365)
    assert all(np.isfinite(v) for v in m.values())
    assert m["sharpe"] == 0 and m["max_drawdown"] == 0 and m["total_return"] == 0


@settings(max_examples=50, deadline=None)
@given(returns=st.lists(st.floats(-0.2, 0.2), min_size=3, max_size=60), scale=st.floats(0.1, 10))
def test_sharpe_invariant_to_scaling_and_drawdown_bounded(returns, scale):
    r = np.asarray(returns)
    base = compute_metrics(curve(np.cumprod(np.r_[1.0, 1 + r])), np.ones(len(r) + 1), None, periods=252)
    scaled = compute_metrics(curve(np.cumprod(np.r_[1.0, 1 + r * scale])), np.ones(len(r) + 1), None, periods=252)
    if r.std() > 1e-9 and np.abs(r * scale).max() < 1:
        assert scaled["sharpe"] == pytest.approx(base["sharpe"], rel=1e-6, abs=1e-9)
    assert -1 <= base["max_drawdown"] <= 0


def test_round_trips_split_at_flat_bars_and_flips():
    from src.backtest.metrics import round_trip_pnl

    equity = np.array([100.0, 101, 103, 102, 102, 99, 97, 98])
    positions = np.array([0.0, 1, 1, 0, 0, -1, 1, 0])
    # long bars 1-2 closed at bar 3: 102-100; short bar 5 flipped at bar 6: 99-102; long 6 closed at 7: 98-99
    np.testing.assert_allclose(round_trip_pnl(equity, positions), [2.0, -3.0, -1.0])
