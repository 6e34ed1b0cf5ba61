"""OHLCV from an exchange through ccxt, with a parquet cache under ``data/raw/``.

The cache file of (exchange, symbol, timeframe) holds every *closed* bar fetched so far, exactly as
the exchange returned it (sorted by time, one row per timestamp): gaps stay gaps, and
``data.on_invalid`` (fail, or repair by forward-filling) is applied after loading, every time. The
still-forming candle is never cached: ``end`` is clamped to the last closed bar. A fetch must cover
[start, end); a part the exchange did not return is an error that names it. A run whose range the
cache covers touches no network; otherwise only the missing head and tail are fetched and merged.
Writes are atomic (temp file + rename); an unreadable or mis-shaped cache file is reported,
discarded and refetched (src/data/cache.py).
"""

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.config_checks import plain_dict
from src.data.cache import read_frame, write_frame
from src.data.credentials import exchange_credentials, redact
from src.data.quality import bar_delta, check_bars
from src.data.validate import OHLCV, DataValidationError, validate_ohlcv
from src.registry import register

log = logging.getLogger(__name__)


def ccxt_module() -> Any:
    """ccxt, imported when an exchange is first used (importing it costs every run that reads
    no exchange about 0.4 s of start-up)."""
    import ccxt

    return ccxt


class ExchangeConfigError(ValueError):
    """A bad exchange id, symbol or timeframe; the message lists the valid ones."""


def cache_path(cache_dir: str | Path, exchange: str, symbol: str, timeframe: str) -> Path:
    safe_symbol = re.sub(r"[^A-Za-z0-9]+", "-", symbol).strip("-")
    return Path(cache_dir) / exchange / safe_symbol / f"{timeframe}.parquet"


def read_cache(path: Path) -> pd.DataFrame | None:
    """The cached bars, or None when there is no usable cache (a bad file is reported)."""
    if not path.is_file():
        return None
    try:
        df, _ = read_frame(path)
        if list(df.columns) != OHLCV or not isinstance(df.index, pd.DatetimeIndex):
            raise ValueError(f"schema {list(df.columns)} / {type(df.index).__name__}")
        return validate_ohlcv(df, source=str(path))
    except Exception as error:  # noqa: BLE001 - any unreadable cache is refetched, never trusted
        log.warning("cache %s is unusable (%s); refetching", path, error)
        return None


class ExchangeClient:
    """A ccxt exchange with retries, backoff and clear errors; credentials only from the env."""

    def __init__(
        self,
        exchange_id: str,
        base_url: str | None = None,
        options: dict | None = None,
        max_retries: int = 5,
        backoff_seconds: float = 1.0,
        sandbox: bool = False,
    ):
        ccxt = ccxt_module()
        # retried: network errors, which include RateLimitExceeded, DDoSProtection, RequestTimeout
        self._retryable, self._refused = ccxt.NetworkError, ccxt.BaseError
        if exchange_id not in ccxt.exchanges:
            raise ExchangeConfigError(
                f"unknown exchange {exchange_id!r} (data.exchange). ccxt knows: {', '.join(ccxt.exchanges)}"
            )
        self.credentials = exchange_credentials()
        self.exchange = getattr(ccxt, exchange_id)({"enableRateLimit": True, **self.credentials, **(options or {})})
        if sandbox:  # the exchange's test network: its URLs, never real money
            self.exchange.set_sandbox_mode(True)
        if base_url:  # e.g. a proxy, or a server replaying recorded responses
            api = self.exchange.urls["api"]
            for key, url in api.items():
                if isinstance(url, str):
                    api[key] = re.sub(r"^https?://[^/]+", base_url.rstrip("/"), url)
        self.max_retries, self.backoff_seconds = max_retries, backoff_seconds

    def call(self, method: str, *args):
        """``exchange.method(*args)``, retrying network and rate-limit errors with backoff."""
        for attempt in range(self.max_retries + 1):
            try:
                return getattr(self.exchange, method)(*args)
            except self._retryable as error:
                if attempt == self.max_retries:
                    raise ConnectionError(
                        f"{self.exchange.id}.{method} failed after {attempt + 1} attempts: "
                        f"{redact(str(error), self.credentials)}"
                    ) from None
                delay = self.backoff_seconds * 2**attempt
                log.warning(
                    "%s.%s: %s; retry %d in %.1fs", self.exchange.id, method, type(error).__name__, attempt + 1, delay
                )
                time.sleep(delay)
            except self._refused as error:
                raise ExchangeConfigError(
                    f"{self.exchange.id}.{method}: {redact(str(error), self.credentials)}"
                ) from None

    def check(self, symbol: str, timeframe: str) -> None:
        markets = self.call("load_markets")
        if symbol not in markets:
            shown = ", ".join(sorted(markets)[:30])
            raise ExchangeConfigError(
                f"{self.exchange.id} has no symbol {symbol!r} (data.symbol); {len(markets)} markets, e.g. {shown}"
            )
        timeframes = self.exchange.timeframes or {}
        if timeframe not in timeframes:
            raise ExchangeConfigError(
                f"{self.exchange.id} has no timeframe {timeframe!r} (data.timeframe); valid: {', '.join(timeframes)}"
            )

    def fetch(self, symbol: str, timeframe: str, start: pd.Timestamp, end: pd.Timestamp, limit: int) -> pd.DataFrame:
        """Bars with open time in [start, end), paginating by ``since`` until covered; raises
        ``DataValidationError`` naming the part of the range the exchange did not return."""
        step = bar_delta(timeframe)
        step_ms = int(step.total_seconds() * 1000)
        since, end_ms, rows = int(start.timestamp() * 1000), int(end.timestamp() * 1000), []
        while since < end_ms:
            batch = self.call("fetch_ohlcv", symbol, timeframe, since, limit)
            batch = [row for row in batch or [] if since <= row[0] < end_ms]
            if not batch:
                break
            rows += batch
            since = int(max(row[0] for row in batch)) + step_ms  # always moves forward
        bars = bars_from_rows(rows)
        first = bars.index.min() if len(bars) else end
        last_end = bars.index.max() + step if len(bars) else end
        for missing_from, missing_to in [(start, first), (last_end, end)]:
            if missing_from < missing_to:
                raise DataValidationError(
                    f"{self.exchange.id} {symbol} {timeframe}: no bars returned for "
                    f"[{missing_from}, {missing_to}) of the requested [{start}, {end}) (an empty "
                    "page ended the download). Fix: narrow data.start/data.end to the range the "
                    "exchange has, or retry later"
                )
        return bars


def bars_from_rows(rows: list) -> pd.DataFrame:
    """ccxt OHLCV rows [ms, open, high, low, close, volume] -> $-prefixed bars on a UTC index."""
    array = np.asarray(rows, dtype=float).reshape(-1, 6)
    index = pd.to_datetime(array[:, 0].astype(np.int64), unit="ms", utc=True)
    return pd.DataFrame(array[:, 1:], index=index, columns=OHLCV)


def closed_end(start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta, now: pd.Timestamp) -> pd.Timestamp:
    """``end`` clamped so that every bar in [start, end) has closed by ``now`` (bars on start's
    grid; the bar that opened at or after now - step is still forming)."""
    last_open = start + ((now - step - start) // step) * step
    return min(end, last_open + step)


def load_exchange_ohlcv(
    exchange: str,
    symbol: str,
    timeframe: str,
    start: str,
    end: str,
    cache_dir: str = "data/raw",
    limit: int = 1000,
    on_invalid: str = "fail",
    base_url: str | None = None,
    options: dict | None = None,
    max_retries: int = 5,
    backoff_seconds: float = 1.0,
    now: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Closed bars of [start, end) from the cache, fetching only what it lacks; ``now`` (default
    the clock) decides which bars have closed."""
    start_ts, requested_end = pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC")
    if requested_end <= start_ts:
        raise ValueError(f"data.end={end} must be after data.start={start}")
    step = bar_delta(timeframe)
    end_ts = closed_end(start_ts, requested_end, step, now or pd.Timestamp.now(tz="UTC"))
    if end_ts <= start_ts:
        raise DataValidationError(
            f"{exchange} {symbol} {timeframe}: no bar of [{start}, {end}) "
            "has closed yet. Fix: move data.start into the past"
        )
    if end_ts < requested_end:
        log.info("data.end=%s is not closed yet: bars up to %s (exclusive), the last closed one", end, end_ts)
    path = cache_path(cache_dir, exchange, symbol, timeframe)
    cached = read_cache(path)
    missing = _missing_ranges(cached, start_ts, end_ts, step)
    fetch_quality = {}
    if missing:
        client = ExchangeClient(exchange, base_url, options, max_retries, backoff_seconds)
        client.check(symbol, timeframe)
        fetched = [client.fetch(symbol, timeframe, a, b, limit) for a, b in missing]
        parts = [part for part in [cached, *fetched] if part is not None and len(part)]
        merged = pd.concat(sorted(parts, key=lambda part: part.index.min()))  # head, cache, tail
        # what this fetch returned is checked (fail names a duplicate), then cached as returned
        fetch_quality = check_bars(merged, timeframe, on_invalid, source=f"{exchange} {symbol} {timeframe}").attrs[
            "data_quality"
        ]
        cached = merged[~merged.index.duplicated(keep="last")].sort_index()
        write_frame(validate_ohlcv(cached, source=str(path)), path)
    if cached is None:  # nothing cached means every bar was missing, so it was fetched above
        raise RuntimeError(f"{path}: no bars after fetching [{start}, {end})")
    window = cached.loc[(cached.index >= start_ts) & (cached.index < end_ts)]
    out = check_bars(window, timeframe, on_invalid, source=str(path))  # repaired every time
    for count in ("unsorted", "duplicates"):  # as fetched (the cache holds one row per bar)
        out.attrs["data_quality"][count] = fetch_quality.get(count, 0)
    return validate_ohlcv(out, source=str(path))


def _missing_ranges(
    cached: pd.DataFrame | None, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """[start, end) minus the cache's span, as at most two ranges (head, tail)."""
    if cached is None or cached.empty:
        return [(start, end)]
    first, last = cached.index[0], cached.index[-1] + step
    ranges = []
    if start < first:
        ranges.append((start, min(first, end)))
    if end > last:
        ranges.append((max(last, start), end))
    return ranges


@register("data", "ccxt")
def load_ccxt(cfg) -> pd.DataFrame:
    return load_exchange_ohlcv(
        cfg.exchange,
        cfg.symbol,
        cfg.timeframe,
        cfg.start,
        cfg.end,
        cfg.cache_dir,
        cfg.limit,
        cfg.on_invalid,
        cfg.base_url,
        plain_dict(cfg.options),
        cfg.max_retries,
        cfg.backoff_seconds,
    )
