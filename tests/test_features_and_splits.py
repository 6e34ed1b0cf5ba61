"""Features only look back; splits are by time."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from src import registry
from src.data.synthetic import synthetic_ohlcv
from src.splits import split_bounds
from tests.conftest import compose_config

RAW = synthetic_ohlcv(900, seed=11)


@settings(max_examples=15, deadline=None)
@given(cut=st.integers(400, 880), seed=st.integers(0, 1000))
def test_features_at_t_ignore_bars_after_t(cut, seed):
    featurize = registry.build("features", compose_config().features)
    future = RAW.copy()
    rng = np.random.default_rng(seed)
    future.iloc[cut + 1 :] = future.iloc[cut + 1 :].to_numpy() * rng.uniform(0.8, 1.25, (len(RAW) - cut - 1, 1))
    a, b = featurize(RAW), featurize(future)
    np.testing.assert_array_equal(a.loc[: RAW.index[cut]].to_numpy(), b.loc[: RAW.index[cut]].to_numpy())


def test_features_are_dollar_prefixed_and_finite():
    featurize = registry.build("features", compose_config().features)
    df = featurize(RAW)
    assert featurize.warmup_rows > 0 and len(df) == len(RAW) - featurize.warmup_rows
    assert all(c.startswith("$") for c in df.columns) and "$rsi_14" in df.columns
    assert np.isfinite(df.to_numpy()).all()


def test_split_bounds_are_ordered_by_time():
    bounds = split_bounds(1000, 0.7, 0.15)
    assert (bounds.validation, bounds.test, bounds.end) == (700, 850, 1000)
    with pytest.raises(ValueError, match="train \\+ validation < 1"):
        split_bounds(1000, 0.9, 0.2)
