"""The real ccxt client over HTTP against a loopback Binance-format server (no internet)."""

import logging
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from src.data.ccxt_source import ExchangeConfigError, cache_path, load_exchange_ohlcv
from src.data.validate import DataValidationError
from tests.conftest import ROOT, mlflow_store, runs
from tests.fake_exchange import FakeBinance

SPOT = {"options": {"fetchMarkets": ["spot"]}}


@pytest.fixture
def server():
    with FakeBinance() as fake:
        yield fake


def load(server, tmp_path, start="2024-01-02", end="2024-03-01", **kwargs):
    options = {
        "cache_dir": tmp_path / "raw",
        "limit": 500,
        "base_url": server.url,
        "options": SPOT,
        "backoff_seconds": 0.01,
        **kwargs,
    }
    return load_exchange_ohlcv("binance", "BTC/USDT", "1h", start, end, **options)


def expected(server, start, end) -> np.ndarray:
    rows = [
        r
        for r in server.rows
        if pd.Timestamp(start, tz="UTC").value // 10**6 <= r[0] < pd.Timestamp(end, tz="UTC").value // 10**6
    ]
    return np.array([[float(x) for x in r[1:6]] for r in rows])


def test_paginates_until_the_range_is_covered(server, tmp_path):
    df = load(server, tmp_path)
    assert len(df) == 59 * 24 and server.kline_requests == 3  # 500 + 500 + 416 bars
    assert df.index[0] == pd.Timestamp("2024-01-02", tz="UTC")
    np.testing.assert_allclose(df.to_numpy(), expected(server, "2024-01-02", "2024-03-01"))


def test_rate_limit_and_dropped_connection_are_retried(server, tmp_path, caplog):
    server.rate_limited, server.drops = 2, 1
    with caplog.at_level(logging.WARNING):
        df = load(server, tmp_path)
    assert len(df) == 59 * 24 and server.kline_requests == 6
    assert "retry 3" in caplog.text


def test_bad_symbol_timeframe_and_exchange_list_the_valid_ones(server, tmp_path):
    with pytest.raises(ExchangeConfigError, match=r"no symbol 'DOGE/EUR'.*BTC/USDT"):
        load_exchange_ohlcv(
            "binance",
            "DOGE/EUR",
            "1h",
            "2024-01-02",
            "2024-01-03",
            cache_dir=tmp_path,
            base_url=server.url,
            options=SPOT,
        )
    with pytest.raises(ExchangeConfigError, match=r"no timeframe '7h'.*1h, 2h"):
        load_exchange_ohlcv(
            "binance",
            "BTC/USDT",
            "7h",
            "2024-01-02",
            "2024-01-03",
            cache_dir=tmp_path,
            base_url=server.url,
            options=SPOT,
        )
    with pytest.raises(ExchangeConfigError, match=r"unknown exchange 'binanse'.*binance"):
        load_exchange_ohlcv("binanse", "BTC/USDT", "1h", "2024-01-02", "2024-01-03", cache_dir=tmp_path)


def test_covered_range_reads_only_the_cache(server, tmp_path):
    first = load(server, tmp_path)
    requests = (server.kline_requests, server.market_requests)
    again = load(server, tmp_path, start="2024-01-10", end="2024-02-01", base_url="http://127.0.0.1:9")
    assert (server.kline_requests, server.market_requests) == requests  # no network at all
    pd.testing.assert_frame_equal(again, first.loc["2024-01-10":"2024-01-31 23:00"])


def test_longer_range_fetches_only_the_missing_bars(server, tmp_path):
    load(server, tmp_path, start="2024-01-10", end="2024-02-01")
    server.kline_requests = 0
    df = load(server, tmp_path, start="2024-01-05", end="2024-02-10", limit=1000)
    assert server.kline_requests == 2  # one page for the head, one for the tail
    np.testing.assert_allclose(df.to_numpy(), expected(server, "2024-01-05", "2024-02-10"))
    assert len(pd.read_parquet(cache_path(tmp_path / "raw", "binance", "BTC/USDT", "1h"))) == len(df)


def test_interrupted_fetch_leaves_no_half_written_cache_and_resumes(server, tmp_path):
    server.fail_after = 1
    with pytest.raises(ConnectionError, match="failed after 2 attempts"):
        load(server, tmp_path, max_retries=1)
    path = cache_path(tmp_path / "raw", "binance", "BTC/USDT", "1h")
    assert not path.exists() and not list(path.parent.glob("*.tmp"))
    server.fail_after = None
    df = load(server, tmp_path)
    np.testing.assert_allclose(df.to_numpy(), expected(server, "2024-01-02", "2024-03-01"))


def test_corrupt_cache_is_reported_and_refetched(server, tmp_path, caplog):
    load(server, tmp_path)
    path = cache_path(tmp_path / "raw", "binance", "BTC/USDT", "1h")
    path.write_bytes(b"not a parquet file")
    with caplog.at_level(logging.WARNING):
        df = load(server, tmp_path)
    assert "unusable" in caplog.text and len(df) == 59 * 24
    pd.read_parquet(path)  # rewritten, readable


def test_duplicates_and_gaps_fail_or_repair(server, tmp_path):
    server.duplicate_row = 30
    del server.rows[40]  # a missing candle
    with pytest.raises(DataValidationError, match=r"duplicate timestamp at 2024-01-02 06:00"):
        load(server, tmp_path, start="2024-01-01", end="2024-01-05")
    df = load(server, tmp_path, start="2024-01-01", end="2024-01-05", on_invalid="repair")
    assert df.attrs["data_quality"]["duplicates"] >= 1 and df.attrs["data_quality"]["gaps"] == 1
    assert len(df) == 4 * 24 and df["@filled"].sum() == 1
    filled = df.index[df["@filled"] == 1][0]
    assert df.loc[filled, "$volume"] == 0 and df.loc[filled, "$open"] == df["$close"].shift().loc[filled]


def test_a_repair_run_does_not_write_fabricated_bars_into_the_cache(server, tmp_path):
    del server.rows[40]  # the exchange has no candle at 2024-01-02 16:00
    repaired = load(server, tmp_path, start="2024-01-01", end="2024-01-05", on_invalid="repair")
    assert repaired.attrs["data_quality"]["gaps"] == 1 and repaired["@filled"].sum() == 1
    cached = pd.read_parquet(cache_path(tmp_path / "raw", "binance", "BTC/USDT", "1h"))
    assert list(cached.columns) == ["$open", "$high", "$low", "$close", "$volume"]
    assert pd.Timestamp("2024-01-02 16:00", tz="UTC") not in cached.index  # only what was returned
    requests = server.kline_requests
    with pytest.raises(DataValidationError, match=r"missing 1h bar \(gap\) at 2024-01-02 16:00"):
        load(server, tmp_path, start="2024-01-01", end="2024-01-05")  # from the cache, same gap
    assert server.kline_requests == requests
    again = load(server, tmp_path, start="2024-01-01", end="2024-01-05", on_invalid="repair")
    assert again.attrs["data_quality"]["gaps"] == 1  # repaired again, and counted again


def test_the_forming_candle_is_never_cached(server, tmp_path):
    forming = 50  # the candle that opened at 2024-01-03 02:00, still forming at 02:30
    now = pd.Timestamp(server.rows[forming][0], unit="ms", tz="UTC") + pd.Timedelta("30min")
    final = list(server.rows[forming])
    server.rows[forming] = final[:4] + [final[1], "1.00000"] + final[6:]  # close = open so far
    early = load(server, tmp_path, start="2024-01-01", end="2024-01-05", now=now)
    assert early.index[-1] == now.floor("h") - pd.Timedelta("1h")  # the last closed bar
    server.rows[forming] = final  # the candle closes with its final values
    later = load(server, tmp_path, start="2024-01-01", end="2024-01-05", now=now + pd.Timedelta("2h"))
    bar = later.loc[now.floor("h")]
    assert bar["$close"] == float(final[4]) and bar["$volume"] == float(final[5])


def test_an_empty_page_that_truncates_the_range_names_the_missing_part(server, tmp_path):
    server.withheld_from = int(pd.Timestamp("2024-01-20", tz="UTC").value // 10**6)
    with pytest.raises(
        DataValidationError,
        match=r"no bars returned for \[2024-01-20 00:00:00\+00:00, "
        r"2024-03-01 00:00:00\+00:00\)",
    ):
        load(server, tmp_path)
    assert not cache_path(tmp_path / "raw", "binance", "BTC/USDT", "1h").exists()


@pytest.mark.slow
def test_run_with_credentials_never_leaks_them(server, tmp_path):
    """The keys come from an environment profile (ENV=staging loads .env.staging): they reach the
    code, and never a log line, an MLflow param or tag, an artifact or a Hydra output file."""
    key, secret = "AKEYTHATMUSTNOTLEAK123", "ASECRETTHATMUSTNOTLEAK456"
    (tmp_path / ".env.staging").write_text(f"EXCHANGE_API_KEY={key}\nEXCHANGE_API_SECRET={secret}\n")
    (tmp_path / ".env").write_text("EXCHANGE_API_KEY=the-profile-wins\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_API")}
    env |= {"MLFLOW_TRACKING_URI": mlflow_store(tmp_path), "ENV": "staging", "PYTHONPATH": str(ROOT)}
    seen = subprocess.run(
        [
            sys.executable,
            "-c",
            "from src.settings import load_environment; load_environment(); "
            "from src.data.credentials import exchange_credentials as c; print(sorted(c().values()))",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert seen.stdout.strip() == str(sorted([key, secret])), seen.stderr
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.run",
            "data=binance_btc_usdt_1h",
            f"data.base_url={server.url}",
            "data.start=2024-01-01",
            "data.end=2024-03-20",
            f"data.cache_dir={tmp_path / 'raw'}",
            "agent=buy_and_hold",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = runs(tmp_path)
    assert run.data.params["data.symbol"] == "BTC/USDT" and run.data.params["data_quality.gaps"] == "0"
    texts = [result.stdout, result.stderr, str(run.data.params), str(run.data.tags)]
    texts += [p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file()]
    artifacts = tmp_path.glob("artifacts/**/*")
    texts += [p.read_text(errors="ignore") for p in artifacts if p.is_file()]
    assert not any(key in text or secret in text for text in texts)
