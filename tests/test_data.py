"""Data sources and the OHLCV validator: each bad input gets its own error naming row and column."""

import numpy as np
import pandas as pd
import pytest

from src.data.file_source import read_ohlcv_file
from src.data.synthetic import synthetic_ohlcv
from src.data.validate import DataValidationError, validate_ohlcv


@pytest.fixture
def bars() -> pd.DataFrame:
    return synthetic_ohlcv(50, seed=0)


def test_synthetic_market_is_seeded_and_valid():
    a, b = synthetic_ohlcv(500, seed=4), synthetic_ohlcv(500, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(synthetic_ohlcv(500, seed=5))
    assert str(a.index.tz) == "UTC"
    returns = np.log(synthetic_ohlcv(20_000, seed=4)["$close"]).diff().dropna()
    assert returns.kurt() > 3  # fat tails


def corrupt(df, row, column, value):
    df = df.copy()
    df.iloc[row, df.columns.get_loc(column)] = value
    return df


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("$close", np.nan, r"NaN or infinite value at row 7 .* column \$close"),
        ("$open", -1.0, r"non-positive price at row 7 .* column \$open"),
        ("$high", 1e-3, r"high below max\(open, close\) at row 7 .* column \$high"),
        ("$low", 1e6, r"low above min\(open, close\) at row 7 .* column \$low"),
        ("$volume", -5.0, r"negative volume at row 7 .* column \$volume"),
    ],
)
def test_bad_values_are_named(bars, column, value, message):
    with pytest.raises(DataValidationError, match=message):
        validate_ohlcv(corrupt(bars, 7, column, value), source="bars.csv")


def test_duplicate_timestamp(bars):
    index = bars.index.to_list()
    index[9] = index[8]
    with pytest.raises(DataValidationError, match="duplicate timestamp at row 9"):
        validate_ohlcv(bars.set_axis(pd.DatetimeIndex(index)), source="bars.csv")


def test_unsorted_timestamps(bars):
    index = bars.index.to_list()
    index[4], index[5] = index[5], index[4]
    with pytest.raises(DataValidationError, match="not increasing at row 5"):
        validate_ohlcv(bars.set_axis(pd.DatetimeIndex(index)), source="bars.csv")


def test_missing_column_and_naive_index(bars):
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['\$volume'\]"):
        validate_ohlcv(bars.drop(columns="$volume"))
    with pytest.raises(DataValidationError, match="not UTC"):
        validate_ohlcv(bars.tz_localize(None))


def test_error_names_the_source_and_a_fix(bars):
    with pytest.raises(DataValidationError, match=r"^bars.csv: .*Fix: "):
        validate_ohlcv(corrupt(bars, 3, "$close", np.nan), source="bars.csv")


@pytest.mark.parametrize("stamps", ["iso", "epoch_s", "epoch_ms", "naive"])
def test_csv_layouts(tmp_path, bars, stamps):
    raw = bars.copy()
    raw.columns = [c.lstrip("$").upper() for c in raw.columns]  # any case, no $ prefix
    seconds = bars.index.as_unit("s").asi8
    raw.insert(
        0,
        "Timestamp",
        {
            "iso": bars.index.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "epoch_s": seconds,
            "epoch_ms": seconds * 1000,
            "naive": bars.index.strftime("%Y-%m-%d %H:%M:%S"),
        }[stamps],
    )
    path = tmp_path / "bars.csv"
    raw.to_csv(path, index=False)
    df = read_ohlcv_file(path)
    assert df.index.tz is not None and (df.index == bars.index).all()
    np.testing.assert_allclose(df.to_numpy(), bars.to_numpy())


def test_csv_bad_row_is_reported_with_the_file(tmp_path, bars):
    raw = corrupt(bars, 12, "$low", -3.0)
    path = tmp_path / "broken.csv"
    raw.rename_axis("timestamp").to_csv(path)
    with pytest.raises(DataValidationError, match=r"broken.csv: non-positive price at row 12"):
        read_ohlcv_file(path)
    with pytest.raises(FileNotFoundError, match="data.path"):
        read_ohlcv_file(tmp_path / "missing.csv")


def test_parquet_with_datetime_index_and_unnamed_index_column(tmp_path, bars):
    parquet = tmp_path / "bars.parquet"
    bars.rename(columns=str.upper).to_parquet(parquet)  # "$OPEN"...: $ prefix, any case
    np.testing.assert_allclose(read_ohlcv_file(parquet).to_numpy(), bars.to_numpy())
    csv = tmp_path / "indexed.csv"
    plain = bars.copy()
    plain.columns = [c.lstrip("$").capitalize() for c in plain.columns]
    plain.tz_localize(None).to_csv(csv)  # first column: the unnamed, naive index
    df = read_ohlcv_file(csv)
    assert str(df.index.tz) == "UTC" and (df.index == bars.index).all()


def test_file_repair_sorts_and_deduplicates(tmp_path, bars):
    messy = pd.concat([bars.iloc[10:], bars.iloc[:10], bars.iloc[[5]]])
    path = tmp_path / "messy.csv"
    messy.rename_axis("timestamp").to_csv(path)
    with pytest.raises(DataValidationError, match="not increasing"):
        read_ohlcv_file(path)
    df = read_ohlcv_file(path, on_invalid="repair")
    assert df.index.is_monotonic_increasing and len(df) == len(bars)
    assert df.attrs["data_quality"]["duplicates"] == 1


def test_gaps_are_checked_when_the_timeframe_is_known(tmp_path, bars):
    path = tmp_path / "gappy.csv"
    bars.drop(bars.index[20]).rename_axis("timestamp").to_csv(path)
    read_ohlcv_file(path)  # no timeframe: weekends and holidays are not gaps
    with pytest.raises(DataValidationError, match=r"missing 1h bar \(gap\) at 2020-01-01 20:00"):
        read_ohlcv_file(path, timeframe="1h")
    assert read_ohlcv_file(path, timeframe="1h", on_invalid="repair")["@filled"].sum() == 1
