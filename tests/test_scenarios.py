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
@given(name=st.sampled_from(NAMES), start=st.integers(500, 900), seed=st.integers(0, 100),
       at=st.one_of(st.none(), st.floats(0.0, 0.9)))
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
        outside = (df.index > last)
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
    assert list(stamps) == [reopening]  # the order waits through the outage, fills at the reopening
    fill = trades[stamps == reopening].iloc[0]
    assert fill.price == pytest.approx(df.loc[reopening, "$open"], rel=2e-4)  # open + slippage


def test_training_can_run_under_the_scenario():
    from src.run import Market

    cfg = compose_config(["scenario=volatility_spike", "data.n_bars=3000", "stress.train_under_scenario=true"])
    market = Market(cfg)
    plain, stressed = market.train(), market.train(cfg.scenario)
    assert plain.index.equals(stressed.index) and not plain["$close"].equals(stressed["$close"])
    assert market.validation().equals(Market(compose_config(["data.n_bars=3000"])).validation())
