"""A loopback HTTP server that answers Binance's public market and kline endpoints.

Responses follow Binance's recorded JSON formats; bars come from a seeded random walk. Knobs let a
test inject HTTP 429s, dropped connections and outages, and count requests.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np

HOUR_MS = 3_600_000
FIRST_BAR_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
N_BARS = 2_000

SYMBOL_INFO = {
    "symbol": "BTCUSDT",
    "status": "TRADING",
    "baseAsset": "BTC",
    "baseAssetPrecision": 8,
    "quoteAsset": "USDT",
    "quotePrecision": 8,
    "quoteAssetPrecision": 8,
    "baseCommissionPrecision": 8,
    "quoteCommissionPrecision": 8,
    "orderTypes": ["LIMIT", "MARKET"],
    "icebergAllowed": True,
    "ocoAllowed": True,
    "isSpotTradingAllowed": True,
    "isMarginTradingAllowed": False,
    "filters": [
        {"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000.00", "tickSize": "0.01"},
        {"filterType": "LOT_SIZE", "minQty": "0.00001", "maxQty": "9000.0", "stepSize": "0.00001"},
    ],
    "permissions": [],
    "permissionSets": [["SPOT"]],
    "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
}


def klines() -> list[list]:
    """Binance kline rows: [open time, o, h, l, c, volume, close time, quote vol, trades, ...]."""
    rng = np.random.default_rng(0)
    close = 40_000 * np.exp(np.cumsum(rng.normal(0, 0.005, N_BARS)))
    open_ = np.r_[40_000, close[:-1]]
    rows = []
    for i in range(N_BARS):
        t = FIRST_BAR_MS + i * HOUR_MS
        high, low = max(open_[i], close[i]) * 1.002, min(open_[i], close[i]) * 0.998
        rows.append(
            [
                t,
                f"{open_[i]:.2f}",
                f"{high:.2f}",
                f"{low:.2f}",
                f"{close[i]:.2f}",
                f"{rng.uniform(10, 100):.5f}",
                t + HOUR_MS - 1,
                "0",
                100,
                "0",
                "0",
                "0",
            ]
        )
    return rows


class FakeBinance:
    """Start with ``with FakeBinance() as server:``; ``server.url`` is the base URL."""

    def __init__(self):
        self.rows = klines()
        self.kline_requests = 0
        self.market_requests = 0
        self.rate_limited = 0  # answer this many kline requests with HTTP 429 first
        self.drops = 0  # close this many kline connections without an answer
        self.fail_after = None  # after this many kline requests, drop every connection
        self.duplicate_row = None  # repeat this bar index in the responses (a dirty feed)
        self.withheld_from = None  # return no bar opening at or after this time (ms): empty pages
        self.server_time = FIRST_BAR_MS + N_BARS * HOUR_MS  # what /api/v3/time answers
        self.orders: dict[str, dict] = {}  # clientOrderId -> order (POST /api/v3/order)
        self.order_posts = 0
        self.api_keys: set[str] = set()  # X-MBX-APIKEY headers seen on signed requests
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _klines(self, query: dict) -> tuple[int, object]:
        with self.lock:
            self.kline_requests += 1
            if self.drops > 0:
                self.drops -= 1
                return -1, None
            if self.rate_limited > 0:
                self.rate_limited -= 1
                return 429, {"code": -1003, "msg": "Too many requests."}
            if self.fail_after is not None and self.kline_requests > self.fail_after:
                return -1, None  # an outage: every connection dropped
        if query.get("symbol") != "BTCUSDT":
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        start = int(query.get("startTime", FIRST_BAR_MS))
        limit = min(int(query.get("limit", 500)), 1000)
        rows = [
            row for row in self.rows if row[0] >= start and (self.withheld_from is None or row[0] < self.withheld_from)
        ][:limit]
        if self.duplicate_row is not None:
            rows += [r for r in rows if r[0] == self.rows[self.duplicate_row][0]]
        return 200, rows

    def _order(self, query: dict, headers) -> tuple[int, object]:
        """A signed spot market order, filled at the close of the latest bar before server time."""
        if "signature" not in query or not headers.get("X-MBX-APIKEY"):
            return 401, {"code": -2014, "msg": "API-key format invalid."}
        with self.lock:
            self.api_keys.add(headers["X-MBX-APIKEY"])
            self.order_posts += 1
            key = query["newClientOrderId"]
            if key in self.orders:
                return 400, {"code": -2010, "msg": "Duplicate order sent."}
            price = float([r for r in self.rows if r[0] < self.server_time][-1][4])
            qty = query["quantity"]
            self.orders[key] = {
                "symbol": "BTCUSDT",
                "orderId": len(self.orders) + 1,
                "clientOrderId": key,
                "transactTime": self.server_time,
                "price": "0.00000000",
                "origQty": qty,
                "executedQty": qty,
                "cummulativeQuoteQty": f"{float(qty) * price:.8f}",
                "status": "FILLED",
                "timeInForce": "GTC",
                "type": "MARKET",
                "side": query["side"],
                "fills": [{"price": f"{price:.2f}", "qty": qty, "commission": "0", "commissionAsset": "USDT"}],
            }
            return 200, self.orders[key]

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                query = {k: v[0] for k, v in parse_qs(url.query + "&" + body).items()}
                if url.path == "/api/v3/order":
                    status, answer = fake._order(query, self.headers)
                else:
                    status, answer = 404, {"code": -1, "msg": f"no route {url.path}"}
                self._answer(status, answer)

            def _answer(self, status, body):
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):  # noqa: N802 - http.server's name
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/api/v3/exchangeInfo":
                    fake.market_requests += 1
                    status, body = (
                        200,
                        {
                            "timezone": "UTC",
                            "serverTime": FIRST_BAR_MS,
                            "rateLimits": [],
                            "exchangeFilters": [],
                            "symbols": [SYMBOL_INFO],
                        },
                    )
                elif url.path == "/api/v3/order":  # fetch an order by its client id
                    order = fake.orders.get(query.get("origClientOrderId"))
                    status, body = (200, order) if order else (400, {"code": -2013, "msg": "Order does not exist."})
                elif url.path == "/api/v3/time":
                    status, body = 200, {"serverTime": fake.server_time}
                elif url.path == "/api/v3/klines":
                    status, body = fake._klines(query)
                else:
                    status, body = 404, {"code": -1, "msg": f"no route {url.path}"}
                if status == -1:  # drop the connection without answering
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self._answer(status, body)

            def log_message(self, *args):
                pass

        return Handler


class FakeBinanceStream:
    """A loopback websocket server speaking Binance's kline stream (ccxt.pro's binance client).

    Streams the bars ``rows[start:stop]`` (FakeBinance klines) as kline events: ``partial``
    updates of each still-forming candle, then its final values (``x`` true). Knobs: repeat a final
    candle message (``duplicates``), send an old candle again (``stale_resends``), close the
    connection after ``drop_after`` candles and resume ``skip_on_reconnect`` candles later on the
    next connection (those bars are only available through REST), go silent after
    ``silent_after`` candles. ``connections``/``open`` count websocket connections.
    """

    def __init__(self, rows: list, start: int, stop: int, partial: int = 2, delay: float = 0.0):
        import asyncio

        self.rows, self.position, self.stop, self.partial, self.delay = rows, start, stop, partial, delay
        self.duplicates = self.stale_resends = 0
        self.drop_after = self.silent_after = None
        self.skip_on_reconnect = 0
        self.connections = self.open = 0
        self.sent = 0
        self.sockets = set()
        self.loop = asyncio.new_event_loop()
        self.url = None
        self._runner = None

    def __enter__(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        ready = threading.Event()

        def serve():
            import asyncio

            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]
            self.url = f"ws://127.0.0.1:{port}/stream"
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc):
        import asyncio

        async def shutdown():
            for ws in list(self.sockets):
                await ws.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _event(self, row: list, values: list, closed: bool) -> dict:
        return {
            "e": "kline",
            "E": row[0] + HOUR_MS,
            "s": "BTCUSDT",
            "k": {
                "t": row[0],
                "T": row[6],
                "s": "BTCUSDT",
                "i": "1h",
                "f": 1,
                "L": 2,
                "o": values[0],
                "c": values[3],
                "h": values[1],
                "l": values[2],
                "v": values[4],
                "n": 10,
                "x": closed,
                "q": "0",
                "V": "0",
                "Q": "0",
                "B": "0",
            },
        }

    async def _send(self, ws) -> None:
        import asyncio

        if self.connections > 1:
            self.position += self.skip_on_reconnect
        sent_here = 0
        while self.position < self.stop and not ws.closed:
            if self.silent_after is not None and self.sent >= self.silent_after:
                await asyncio.sleep(0.05)
                continue
            row = self.rows[self.position]
            final = row[1:6]
            for k in range(self.partial):  # the forming candle: open, then partial moves
                part = [final[0], final[0], final[0], final[0], f"{float(final[4]) * (k + 1) / 10:.5f}"]
                await ws.send_json(self._event(row, part, False))
            await ws.send_json(self._event(row, final, True))
            for _ in range(self.duplicates):
                await ws.send_json(self._event(row, final, True))
            for _ in range(self.stale_resends):  # an old candle arrives late
                old = self.rows[self.position - 3]
                await ws.send_json(self._event(old, old[1:6], True))
            self.position += 1
            self.sent += 1
            sent_here += 1
            await asyncio.sleep(self.delay)
            if self.drop_after is not None and sent_here >= self.drop_after and self.connections == 1:
                await ws.close()
                return

    async def _handle(self, request):
        import asyncio

        from aiohttp import web

        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        self.open += 1
        self.sockets.add(ws)
        try:
            subscribe = await ws.receive_json(timeout=10)
            await ws.send_json({"result": None, "id": subscribe["id"]})
            sender = asyncio.ensure_future(self._send(ws))
            async for _ in ws:  # until the client closes (pings are answered by aiohttp)
                pass
            sender.cancel()
        finally:
            self.open -= 1
            self.sockets.discard(ws)
        return ws
