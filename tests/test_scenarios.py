"""Scenario injectors: consistent bars, the past untouched, seeded, composable."""

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from src.data.synthetic import synthetic_ohlcv
from src.data.validate import validate_ohlcv
from src.scenarios import apply_scenarios
from tests.conftest import ROOT, compose_config

RAW = synthetic_ohlcv(1000, seed=2)
NAMES = sorted(p.stem for p in (ROOT / "conf" / "scenario").glob("*.yaml"))


def scenario(name: str, **params) -> OmegaConf:
    cfg = compose_config([f"scenario={name}"]).scenario
    return OmegaConf.merge(cfg, {name: params}) if params else cfg


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    start=st.integers(300, 600),
    seed=st.integers(0, 100),
    at=st.one_of(st.none(), st.floats(0.0, 0.35)),
)
def test_injectors_keep_bars_valid_and_the_past_untouched(name, start, seed, at):
    cfg = scenario(name, **({"seed": seed, "at": at} if name not in ("none", "low_liquidity") else {}))
    df, marks = apply_scenarios(RAW, start, cfg)
    validate_ohlcv(df[RAW.columns])  # high >= max(open, close), low <= min, prices > 0, volume >= 0
    assert df.iloc[:start][RAW.columns].equals(RAW.iloc[:start])
    if name != "gap":
        assert df.index.equals(RAW.index)
    else:
        assert df.index.isin(RAW.index).all() and len(df) < len(RAW)
    for first, last in marks:
        assert RAW.index[start] <= first <= last
        outside = df.index > last
        returns = np.log(df["$close"]).diff()[outside]
        original = np.log(RAW["$close"]).diff().reindex(returns.index)
        np.testing.assert_allclose(returns.iloc[1:], original.iloc[1:], atol=1e-12)  # shape kept
    again, _ = apply_scenarios(RAW, start, cfg)
    assert again.equals(df)  # seeded


def test_flash_crash_drops_and_partly_recovers():
    cfg = scenario("flash_crash")
    df, (mark,) = apply_scenarios(RAW, 800, cfg)
    ratio = (df["$close"] / RAW["$close"]).to_numpy()
    params = cfg.flash_crash
    at = 800 + int(params.at * 200)
    assert ratio[at - 1] == 1.0 and ratio.min() == pytest.approx(1 - params.drop)
    assert ratio[-1] == pytest.approx(1 - params.drop * (1 - params.recovery))
    assert mark[0] == RAW.index[at]


def bar_stats(df: pd.DataFrame, rows: slice) -> dict[str, np.ndarray]:
    """Per bar: the opening gap log(open / previous close), the range log(high / low) and the
    move log(close / open)."""
    gap = np.log(df["$open"] / df["$close"].shift())
    return {
        "gap": gap.to_numpy()[rows],
        "range": np.log(df["$high"] / df["$low"]).to_numpy()[rows],
        "move": np.log(df["$close"] / df["$open"]).to_numpy()[rows],
    }


@pytest.mark.parametrize("name", ["volatility_spike", "trend_reversal", "flash_crash"])
def test_a_shock_unfolds_inside_the_bars_not_in_their_opening_gaps(name):
    """Each injected bar opens where the original opened relative to the previous close (same
    gap), and its range moves as the scenario states: x factor under a volatility spike,
    unchanged under a reversal (the move mirrored), widened by the crash path under a crash."""
    cfg = scenario(name)
    df, ((first, last),) = apply_scenarios(RAW, 500, cfg)
    rows = slice(RAW.index.get_loc(first), RAW.index.get_loc(last) + 1)
    before, after = bar_stats(RAW, rows), bar_stats(df, rows)
    np.testing.assert_allclose(after["gap"], before["gap"], atol=1e-12)
    assert np.std(after["gap"]) == pytest.approx(np.std(before["gap"]), rel=1e-9)
    if name == "volatility_spike":
        np.testing.assert_allclose(after["range"], before["range"] * cfg[name].factor, rtol=1e-9)
        np.testing.assert_allclose(after["move"], before["move"] * cfg[name].factor, atol=1e-12)
    elif name == "trend_reversal":
        np.testing.assert_allclose(after["range"], before["range"], rtol=1e-9)
        np.testing.assert_allclose(after["move"], -before["move"], atol=1e-12)
    else:
        shock = after["move"] - before["move"]
        np.testing.assert_allclose(after["range"], before["range"] + np.abs(shock), rtol=1e-9)
        assert np.exp(np.cumsum(shock)).min() == pytest.approx(1 - cfg[name].drop)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "scenario=flash_crash scenario.flash_crash.drop=1.5",
            r"scenario.flash_crash.drop=1.5 is out of range; valid: a number in \(0, 1\)",
        ),
        (
            "scenario=volatility_spike scenario.volatility_spike.factor=-2",
            r"factor=-2 is out of range; valid: a number in \(0, inf\]",
        ),
        ("scenario=gap scenario.gap.at=1.0", r"scenario.gap.at=1.0 is out of range; valid: a number in \[0, 1\)"),
        (
            "scenario=fee_spike scenario.fee_spike.bars=0",
            r"scenario.fee_spike.bars=0 is out of range; valid: an integer",
        ),
        ("scenario=trend_reversal scenario.trend_reversal.bars=600", r"600 bars do not fit the 500 bars"),
        ("scenario=trend_reversal scenario.trend_reversal.at=0.9", r"runs past the end.*valid: at <= 0.520"),
    ],
)
def test_scenario_parameters_out_of_range_are_refused(override, message):
    from src.config_checks import ConfigError

    with pytest.raises(ConfigError, match=message):
        apply_scenarios(RAW, 500, compose_config(override.split()).scenario)


def test_cost_scenarios_scale_the_per_bar_costs():
    df, _ = apply_scenarios(RAW, 800, scenario("[fee_spike,low_liquidity]"))
    assert (df["@fee_scale"].iloc[:800] == 1).all() and df["@fee_scale"].max() == 10.0
    assert (df["@slippage_scale"].iloc[800:] == 10.0).all()
    assert (df["$volume"].iloc[800:] < RAW["$volume"].iloc[800:]).all()


class BuyBeforeTheGap:
    """Flat, then long from the close of the last bar before ``first`` on."""

    name = "buy_before_the_gap"

    def __init__(self, first):
        self.first = first

    def signals(self, df):
        return torch.as_tensor(df.index >= df.index[df.index < self.first][-1], dtype=torch.int64)


def test_no_fill_inside_a_gap(market_df):
    from src import registry

    cfg = compose_config(["scenario=gap", "scenario.gap.bars=30", "scenario.gap.at=0.5"])
    start = 2000
    df, ((first, last),) = apply_scenarios(market_df, start, cfg.scenario)
    df = df.iloc[start - 40 :]
    env = registry.build("env", cfg.env, df, seed=0, num_envs=1)
    backtester = registry.build("backtest", cfg.backtest, cfg.env, env.actions)
    trades = backtester.run(BuyBeforeTheGap(first), df).trades
    stamps = pd.DatetimeIndex(trades.timestamp)
    assert not ((stamps >= first) & (stamps <= last)).any()
    reopening = df.index[df.index > last][0]
    entries = stamps[trades.reason == "signal"]
    assert list(entries) == [reopening]  # the order waits through the outage, fills at the reopening
    assert list(trades.reason) == ["signal", "end_of_backtest"]
    fill = trades[stamps == reopening].iloc[0]
    assert fill.price == pytest.approx(df.loc[reopening, "$open"], rel=2e-4)  # open + slippage


def test_training_can_run_under_the_scenario():
    from src.run import Market

    cfg = compose_config(["scenario=volatility_spike", "data.n_bars=3000", "stress.train_under_scenario=true"])
    market = Market(cfg)
    plain, stressed = market.train(), market.train(cfg.scenario)
    assert plain.index.equals(stressed.index) and not plain["$close"].equals(stressed["$close"])
    assert market.validation().equals(Market(compose_config(["data.n_bars=3000"])).validation())
