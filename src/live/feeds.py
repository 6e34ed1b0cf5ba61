"""Feeds: async sources of closed bars (``stream``) with an explicit ``close``.

- ``ReplayFeed``: bars of a frame (the run's test split, or any ``data=`` source) at ``speed``
  bars per second (0 = as fast as possible), through the same live code path.
- ``CcxtFeed``: an exchange's websocket candles (ccxt's bundled ``ccxt.pro`` ``watch_ohlcv``),
  assembled into closed bars (``src/live/bars.py``). A dropped connection reconnects with
  exponential backoff; whenever a candle arrives more than one bar after the last one known (after
  a reconnect, or a resumed session), the missed closed bars are backfilled through REST
  ``fetch_ohlcv`` (the project's ccxt client) before it. No closed bar for ``stale_after``
  timeframes yields a ``Stale`` marker (the session stops ordering and applies
  ``paper.on_stale``) and the feed keeps waiting.
"""

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pandas as pd

from src.config_checks import plain_dict
from src.data.ccxt_source import ExchangeClient, ccxt_module
from src.data.credentials import exchange_credentials
from src.data.quality import bar_delta
from src.data.validate import OHLCV
from src.live.bars import Candle, ClosedBars, as_candle
from src.registry import register

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stale:
    """No closed bar for ``seconds``; ``since``: open time (ms) of the last bar seen."""

    since: int
    seconds: float


def candles(df: pd.DataFrame) -> list[Candle]:
    """Rows of an OHLCV frame as candles (open time in ms)."""
    stamps = df.index.as_unit("ms").asi8
    values = df[OHLCV].to_numpy(float)
    return [as_candle((t, *row)) for t, row in zip(stamps, values)]


class ReplayFeed:
    """The bars of ``df`` after ``after`` (ms), ``speed`` bars per second (0: no wait)."""

    def __init__(self, df: pd.DataFrame, speed: float = 0.0):
        self.df, self.speed = df, float(speed)
        self.counts = {"duplicates": 0, "out_of_order": 0, "reconnects": 0, "backfilled": 0}

    async def stream(self, after: int | None = None) -> AsyncIterator[Candle]:
        for candle in candles(self.df):
            if after is not None and candle[0] <= after:
                continue
            yield candle
            await asyncio.sleep(1.0 / self.speed if self.speed > 0 else 0)

    async def close(self) -> None:
        return None


class CcxtFeed:
    """Closed bars of ``symbol``/``timeframe`` from ``exchange`` over its websocket."""

    def __init__(self, data_cfg, feed_cfg):
        self.symbol, self.timeframe = data_cfg.symbol, data_cfg.timeframe
        self.step = bar_delta(self.timeframe)
        self.step_ms = int(self.step.total_seconds() * 1000)
        self.feed_cfg = feed_cfg
        options = plain_dict(data_cfg.options)
        self.rest = ExchangeClient(
            data_cfg.exchange, data_cfg.base_url, options, data_cfg.max_retries, data_cfg.backoff_seconds
        )
        import ccxt.pro  # with the exchange: see ccxt_module

        ccxt = ccxt_module()
        self._reconnectable = (ccxt.NetworkError, ccxt.ExchangeError, OSError)
        exchange_class = getattr(ccxt.pro, data_cfg.exchange)
        self.exchange = exchange_class({"enableRateLimit": True, **exchange_credentials(), **options})
        if data_cfg.base_url:  # REST (markets) on the same host as the client above
            self.exchange.urls["api"] = dict(self.rest.exchange.urls["api"], ws=self.exchange.urls["api"]["ws"])
        if feed_cfg.ws_url:
            ws = self.exchange.urls["api"]["ws"]
            for key, url in list(ws.items()):
                if isinstance(url, str):
                    ws[key] = re.sub(r"^wss?://[^/]+(/[^/]*)?", feed_cfg.ws_url.rstrip("/"), url)
        self.assembler = ClosedBars(self.step_ms)
        self._watch: asyncio.Future | None = None
        # reconnects: connection errors the feed saw (ccxt also reconnects by itself on the next
        # watch); backfilled: closed bars that came from REST
        self.counts = {"duplicates": 0, "out_of_order": 0, "reconnects": 0, "backfilled": 0}

    def history(self, bars: int) -> pd.DataFrame:
        """The last ``bars`` closed bars through REST, by the exchange's clock (the session's
        warm-up history)."""
        self.rest.check(self.symbol, self.timeframe)
        now = pd.Timestamp(self.rest.call("fetch_time"), unit="ms", tz="UTC")
        end = now.floor(self.step)  # the bar opening at end is still forming
        return self.rest.fetch(self.symbol, self.timeframe, end - bars * self.step, end, 1000)

    async def stream(self, after: int | None = None) -> AsyncIterator[Candle | Stale]:
        """Closed bars after ``after`` (ms), in order, each once; ``Stale`` markers."""
        self.assembler.last_closed = after
        await self.exchange.load_markets()
        stale_after = float(self.feed_cfg.stale_after) * self.step.total_seconds()
        grace = self.feed_cfg.close_grace_seconds  # null: a bar closes only when the next one starts
        last_bar_time, failures = time.monotonic(), 0
        while True:
            if self._watch is None:  # one pending watch, never cancelled by a timeout
                self._watch = asyncio.ensure_future(self.exchange.watch_ohlcv(self.symbol, self.timeframe))
            done, _ = await asyncio.wait({self._watch}, timeout=min(stale_after, 1.0))
            updates = [] if done else self._cached()
            if done:
                watch, self._watch = self._watch, None
                try:
                    updates = watch.result()
                    failures = 0
                except self._reconnectable as error:
                    failures += 1
                    if failures > int(self.feed_cfg.max_reconnects):
                        raise ConnectionError(
                            f"{self.exchange.id} websocket: gave up after "
                            f"{failures - 1} reconnects ({type(error).__name__})"
                        ) from None
                    delay = float(self.feed_cfg.reconnect_backoff) * 2 ** (failures - 1)
                    log.warning(
                        "websocket %s (%s); reconnect %d in %.1fs", type(error).__name__, error, failures, delay
                    )
                    self.counts["reconnects"] += 1
                    await asyncio.sleep(delay)
                    continue
            closed = []
            for update in updates:
                closed += await self._backfill(int(update[0]))
                closed += self.assembler.update(tuple(update))
            if grace is not None:
                closed += self.assembler.close_due(int(time.time() * 1000), int(float(grace) * 1000))
            self.counts["duplicates"] = self.assembler.duplicates
            self.counts["out_of_order"] = self.assembler.out_of_order
            for candle in closed:
                last_bar_time = time.monotonic()
                yield candle
            if time.monotonic() - last_bar_time > stale_after:
                yield Stale(self.assembler.last_closed or 0, time.monotonic() - last_bar_time)
                last_bar_time = time.monotonic()

    def _cached(self) -> list[list]:
        """Candles ccxt has received but not yet handed to a watch (it resolves a watch once for
        a burst of messages): those at or after the forming bar, from its candle cache."""
        cache = (self.exchange.ohlcvs.get(self.exchange.market(self.symbol)["symbol"]) or {}).get(self.timeframe) or []
        forming = self.assembler.forming
        newest = forming[0] if forming is not None else (self.assembler.last_closed or -1) + 1
        return [candle for candle in list(cache) if candle[0] >= newest]

    async def _backfill(self, stamp: int) -> list[Candle]:
        """The closed bars between the last one known and a candle opening at ``stamp`` (ms),
        from REST, oldest first: none when ``stamp`` follows on."""
        forming = self.assembler.forming
        known = forming[0] if forming is not None else self.assembler.last_closed
        if known is None or stamp <= known + self.step_ms:
            return []
        start = pd.Timestamp((self.assembler.last_closed or known - self.step_ms) + self.step_ms, unit="ms", tz="UTC")
        end = pd.Timestamp(stamp, unit="ms", tz="UTC")
        bars = await asyncio.to_thread(self.rest.fetch, self.symbol, self.timeframe, start, end, 1000)
        missed = [c for c in candles(bars) if self.assembler.accept(c)]
        self.counts["backfilled"] += len(missed)
        log.info("backfilled %d closed bars through REST", len(missed))
        return missed

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        await self.exchange.close()


@register("feed", "replay")
def build_replay(cfg, data_cfg, raw: pd.DataFrame, stream_from: int) -> ReplayFeed:
    """Replay ``raw`` from row ``stream_from`` (the test split's first bar)."""
    return ReplayFeed(raw.iloc[stream_from:], cfg.speed)


@register("feed", "ccxt")
def build_ccxt(cfg, data_cfg, raw: pd.DataFrame | None = None, stream_from: int | None = None) -> CcxtFeed:
    return CcxtFeed(data_cfg, cfg)
