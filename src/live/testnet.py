"""``broker=ccxt_testnet``: the session's fills also sent as real orders to an exchange sandbox.

Each fill the paper broker makes (the backtest kernel decides it) is mirrored as a market order
on the exchange's test network (ccxt ``set_sandbox_mode(True)``) with the order's idempotency key
as client order id; before sending, the key is looked up in the journal and then on the exchange,
so a restarted session never sends an order twice. The exchange's answer (filled amount, average
price, status) is journaled in ``exchange_orders`` and reconciled against the paper fill (the
amount difference after the exchange's lot rounding). There is no real-money mode: the broker
refuses to start without sandbox mode, and without ``EXCHANGE_API_KEY``/``EXCHANGE_API_SECRET``
(environment or ``.env``), which are never logged, journaled or written to MLflow.
"""

from src.config_checks import ConfigError, plain_dict
from src.data.ccxt_source import ExchangeClient, ccxt_module
from src.data.credentials import exchange_credentials, redact
from src.live.journal import Journal

SCHEMA = """CREATE TABLE IF NOT EXISTS exchange_orders (key TEXT NOT NULL, kind TEXT NOT NULL,
    ts INTEGER, side TEXT, amount REAL, filled REAL, price REAL, status TEXT, exchange_id TEXT,
    difference REAL, PRIMARY KEY (key, kind))"""


class TestnetBroker:
    """Mirrors fills onto ``data``'s exchange sandbox (``broker`` config: ``sandbox`` must be true)."""

    def __init__(self, data_cfg, broker_cfg, journal: Journal):
        if not broker_cfg.sandbox:
            raise ConfigError(
                "broker=ccxt_testnet runs only against the exchange's sandbox "
                "(broker.sandbox=true); there is no real-money mode"
            )
        if not exchange_credentials():
            raise ConfigError(
                "broker=ccxt_testnet needs EXCHANGE_API_KEY and EXCHANGE_API_SECRET "
                "(testnet keys) in the environment or .env"
            )
        options = plain_dict(data_cfg.options)
        self.client = ExchangeClient(
            data_cfg.exchange, data_cfg.base_url, options, data_cfg.max_retries, data_cfg.backoff_seconds, sandbox=True
        )
        self.symbol, self.journal = data_cfg.symbol, journal
        journal.db.execute(SCHEMA)

    def mirror(self, key: str, kind: str, ts: int, units: float) -> None:
        """Send (once) the market order for a paper fill of ``units`` (base currency)."""
        done = self.journal.db.execute(
            "SELECT 1 FROM exchange_orders WHERE key = ? AND kind = ?", (key, kind)
        ).fetchone()
        if done:
            return
        client_id = f"{key}:{kind}".replace(":", "-")[-36:]  # the exchange's id length limit
        order = self._existing(client_id) or self.client.call(
            "create_order",
            self.symbol,
            "market",
            "buy" if units > 0 else "sell",
            abs(units),
            None,
            {"newClientOrderId": client_id},
        )
        filled = float(order.get("filled") or 0.0)
        self.journal.db.execute(
            "INSERT OR IGNORE INTO exchange_orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                kind,
                ts,
                order.get("side"),
                abs(units),
                filled,
                order.get("average"),
                order.get("status"),
                str(order.get("id")),
                abs(units) - filled,
            ),
        )

    def _existing(self, client_id: str) -> dict | None:
        """The order already on the exchange under ``client_id`` (a crash after sending)."""
        ccxt = ccxt_module()
        try:
            return self.client.exchange.fetch_order(None, self.symbol, {"origClientOrderId": client_id})
        except ccxt.OrderNotFound:
            return None
        except ccxt.BaseError as error:
            raise ConnectionError(redact(str(error), self.client.credentials)) from None

    def close(self) -> None:
        """Nothing held open (ccxt's REST client keeps no connection to release)."""
