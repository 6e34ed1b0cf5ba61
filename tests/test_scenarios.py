"""Scenario injectors keep bars consistent and leave the past alone."""
import numpy as np
import pytest

from src import registry
from src.backtest.engine import Execution
from src.data.synthetic import synthetic_ohlcv
from src.data.validate import validate_ohlcv
from tests.conftest import compose_config

RAW = synthetic_ohlcv(1000, seed=2)
START = 800


@pytest.mark.parametrize("scenario", ["none", "flash_crash", "low_liquidity"])
def test_injector_keeps_ohlc_valid_and_past_untouched(scenario):
    inject = registry.build("scenario", compose_config([f"scenario={scenario}"]).scenario)
    execution = Execution(0.001, 1.0)
    df, stressed_execution = inject(RAW, execution, START)
    validate_ohlcv(df)
    assert df.iloc[:START].equals(RAW.iloc[:START])
    assert df.index.equals(RAW.index)
    again, _ = inject(RAW, execution, START)
    assert again.equals(df)  # seeded: same output every time
    if scenario == "low_liquidity":
        assert stressed_execution.slippage_bps == 10.0
        assert (df["$volume"].iloc[START:] < RAW["$volume"].iloc[START:]).all()


def test_flash_crash_drops_and_partly_recovers():
    cfg = compose_config(["scenario=flash_crash"]).scenario
    df, _ = registry.build("scenario", cfg)(RAW, Execution(0.001, 1.0), START)
    ratio = (df["$close"] / RAW["$close"]).to_numpy()
    at = START + int(cfg.at * (len(RAW) - START))
    assert ratio[at - 1] == 1.0
    assert ratio.min() == pytest.approx(1 - cfg.drop)
    assert ratio[-1] == pytest.approx(1 - cfg.drop * (1 - cfg.recovery))
    assert np.all(df["$volume"].iloc[at : at + cfg.crash_bars] > RAW["$volume"].iloc[at : at + cfg.crash_bars])
