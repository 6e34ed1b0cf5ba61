"""TA-Lib feature sets: no look-ahead per indicator, robust inputs, normalisation, cache."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import talib
from omegaconf import OmegaConf

from src import registry
from src.data.cache import read_frame, write_frame
from src.data.synthetic import synthetic_ohlcv
from tests.conftest import compose_config

RAW = synthetic_ohlcv(700, seed=21)
FULL = compose_config(["features=ta_full", "features.cache_dir=null"]).features


def feature_set(normalize="none", indicators=None, **extra):
    cfg = OmegaConf.merge(FULL, {"normalize": {"method": normalize, "window": 64}, **extra})
    if indicators is not None:
        cfg.indicators = indicators
    return registry.build("features", cfg)


def perturb_after(df: pd.DataFrame, t: int, seed: int) -> pd.DataFrame:
    """Bars after row t scaled by random factors (OHLC by one factor a bar: still valid bars)."""
    out = df.copy()
    factors = np.random.default_rng(seed).uniform(0.7, 1.4, size=(len(df) - t - 1, 1))
    out.iloc[t + 1 :, :4] = df.iloc[t + 1 :, :4].to_numpy() * factors
    out.iloc[t + 1 :, 4] = df.iloc[t + 1 :, 4].to_numpy() * factors[:, 0] ** 2
    return out


def test_ta_full_has_44_plus_indicators_with_dollar_names():
    assert len(FULL.indicators) >= 44
    out = feature_set()(RAW)
    assert {"$rsi_14", "$macd_12_26_9", "$macdsignal_12_26_9", "$upperband_20_2_2"} <= set(out.columns)
    assert all(c.startswith("$") for c in out.columns)


@pytest.mark.parametrize("entry", OmegaConf.to_container(FULL.indicators), ids=lambda e: e["fn"])
def test_each_indicator_ignores_bars_after_t(entry):
    featurize = feature_set(indicators=[entry])
    base = featurize(RAW)
    for t, seed in [(300, 0), (450, 1), (650, 2)]:
        changed = featurize(perturb_after(RAW, t, seed))
        stamp = RAW.index[t]
        pd.testing.assert_frame_equal(base.loc[:stamp], changed.loc[:stamp])


@pytest.mark.parametrize("normalize", ["rolling_zscore", "train_zscore"])
def test_normalised_pipeline_ignores_bars_after_t(normalize):
    featurize = feature_set(normalize)
    t = 520  # after the 400 fit rows: the scaler saw only train rows
    base = featurize(RAW, fit_rows=400)
    changed = featurize(perturb_after(RAW, t, 5), fit_rows=400)
    pd.testing.assert_frame_equal(base.loc[: RAW.index[t]], changed.loc[: RAW.index[t]])


def test_train_zscore_is_fitted_on_train_rows_only():
    out = feature_set("train_zscore")(RAW, fit_rows=400)
    rsi = pd.Series(talib.RSI(RAW["$close"].to_numpy(), 14), index=RAW.index)
    train = rsi.iloc[:400]
    expected = ((rsi - train.mean()) / train.std()).clip(-5, 5).loc[out.index]
    np.testing.assert_allclose(out["$rsi_14"].to_numpy(), expected.to_numpy(), rtol=1e-9)


def test_column_order_of_the_input_does_not_matter():
    shuffled = RAW[["$volume", "$close", "$low", "$open", "$high"]]
    a, b = feature_set("rolling_zscore")(RAW), feature_set("rolling_zscore")(shuffled)
    pd.testing.assert_frame_equal(a.drop(columns=RAW.columns), b.drop(columns=RAW.columns))


@pytest.mark.parametrize("normalize", ["none", "rolling_zscore", "train_zscore"])
def test_constant_prices_give_finite_features(normalize):
    flat = RAW.copy()
    flat.iloc[:, :4] = 100.0
    flat["$volume"] = 1_000.0
    out = feature_set(normalize)(flat, fit_rows=400)
    assert np.isfinite(out.to_numpy()).all()


def test_feature_cache_is_reused_and_verified_by_content(tmp_path, caplog):
    featurize = feature_set("rolling_zscore", cache_dir=str(tmp_path))
    calls = []
    compute = featurize.compute
    featurize.compute = lambda df: calls.append(1) or compute(df)
    first = featurize(RAW)
    (path,) = tmp_path.glob("*.arrow")
    again = featurize(RAW)
    assert len(calls) == 1 and again.equals(first)  # second call: read from the cache

    frame, record = read_frame(path)
    frame = frame.copy()  # a cached frame is a read-only view of the mapped file
    frame.iloc[10, 7] += 1.0  # tamper with a value, keep the old metadata
    write_frame(frame, path, record)
    assert featurize(RAW).equals(first) and len(calls) == 2 and "verification" in caplog.text

    featurize(RAW.iloc[:-1])  # other input data: another key, another file
    assert len(calls) == 3 and len(list(tmp_path.glob("*.arrow"))) == 2
    other = next(p for p in tmp_path.glob("*.arrow") if p != path)
    shutil.copy(other, path)  # a file under the right name but with another key is refused
    assert featurize(RAW).equals(first) and len(calls) == 4


def _mapped_ranges(path) -> list[tuple[int, int]]:
    """The address ranges where this process maps ``path`` (Linux's /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            low, high = line.split()[0].split("-")
            ranges.append((int(low, 16), int(high, 16)))
    return ranges


def test_a_cached_frame_is_read_in_place_from_the_mapped_file(tmp_path):
    """Every column of a reloaded feature cache, longer than pyarrow's default 64K-row batch,
    lies in the memory-mapped file: nothing is copied (a 1M-bar reload stays well under 0.2 s)."""
    n = 100_000
    df = pd.DataFrame(
        {f"$f{j}": np.random.default_rng(j).normal(size=n) for j in range(3)},
        index=pd.date_range("2024", periods=n, freq="min", tz="UTC"),
    )
    path = tmp_path / "features.arrow"
    write_frame(df, path, {"key": "k"})
    frame, record = read_frame(path)
    assert frame.equals(df) and record == {"key": "k"}
    ranges = _mapped_ranges(path)
    for column in frame.columns:
        address = frame[column].to_numpy().ctypes.data
        assert any(low <= address < high for low, high in ranges), column


def test_rolling_zscore_matches_pandas_rolling_statistics():
    from src.features.normalize import CLIP, rolling_zscore

    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "level": np.cumsum(rng.normal(size=3000)) * 1e6 + 1e9,  # OBV-like scale
            "noise": rng.normal(size=3000),
            "flat": 1.0,
        }
    )
    df.iloc[:30, 1] = np.nan
    window = 64
    mean, std = df.rolling(window).mean(), df.rolling(window).std()
    expected = ((df - mean) / std.where(std > 0)).where(std > 0, 0.0).where(mean.notna()).clip(-CLIP, CLIP)
    got = pd.DataFrame(dict(zip(df.columns, rolling_zscore([df[c].to_numpy(float, copy=True) for c in df], window))))
    assert got.isna().equals(expected.isna())
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), atol=1e-8, equal_nan=True)
