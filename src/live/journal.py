"""The session journal: SQLite (WAL) in ``paper_runs/<session>.db``, one transaction per bar.

Tables: ``bars`` (every closed bar, warm-up history flagged), ``decisions`` (observation hash,
action, target, decision latency), ``orders`` (idempotency key ``<session>:<bar ms>``),
``fills``, ``equity`` (per bar), ``events`` (stale feed, reconnects), ``state`` (the broker's
account and the pending target after the latest bar) and ``meta``. Everything a bar causes is
written in one transaction keyed by the bar, so a crash loses or duplicates nothing: a restart
resumes from the last committed bar, and re-writing a bar's rows is a no-op.
"""

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from src.data.validate import OHLCV

TABLES = ("meta", "bars", "decisions", "orders", "fills", "equity", "events", "state")  # SCHEMA's
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bars (ts INTEGER PRIMARY KEY, open REAL, high REAL, low REAL,
    close REAL, volume REAL, history INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (ts INTEGER PRIMARY KEY, obs_hash TEXT, action TEXT,
    target REAL, latency_ms REAL);
CREATE TABLE IF NOT EXISTS orders (key TEXT PRIMARY KEY, ts INTEGER NOT NULL, target REAL,
    status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fills (ts INTEGER NOT NULL, kind TEXT NOT NULL, side TEXT,
    units REAL, price REAL, fee REAL, reason TEXT, partial INTEGER, order_key TEXT,
    PRIMARY KEY (ts, kind));
CREATE TABLE IF NOT EXISTS equity (ts INTEGER PRIMARY KEY, equity REAL, cash REAL, units REAL,
    position REAL, financing REAL);
CREATE TABLE IF NOT EXISTS events (ts INTEGER, kind TEXT, detail TEXT,
    PRIMARY KEY (ts, kind));
CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), ts INTEGER,
    account TEXT, pending REAL);
"""


class Journal:
    """Open (or create) ``path``; ``with journal.bar():`` groups one bar's writes."""

    def __init__(self, path: Path, session: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.session = path, session
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    @contextmanager
    def bar(self) -> Iterator[None]:
        """One atomic transaction: all of a bar's rows, or none."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def order_key(self, ts: int) -> str:
        return f"{self.session}:{ts}"

    def set_meta(self, **values) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()]
        )

    def meta(self) -> dict:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def add_bar(self, candle, history: bool = False) -> None:
        self.db.execute("INSERT OR IGNORE INTO bars VALUES (?, ?, ?, ?, ?, ?, ?)", (*candle, int(history)))

    def add_history(self, df: pd.DataFrame) -> None:
        from src.live.feeds import candles

        with self.bar():
            for candle in candles(df):
                self.add_bar(candle, history=True)

    def add_decision(self, ts: int, obs_hash: str, action, target: float, latency_ms: float) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO decisions VALUES (?, ?, ?, ?, ?)",
            (ts, obs_hash, json.dumps(action), target, latency_ms),
        )
        self.db.execute("INSERT OR IGNORE INTO orders VALUES (?, ?, ?, 'open')", (self.order_key(ts), ts, target))

    def add_fill(
        self,
        ts: int,
        kind: str,
        units: float,
        price: float,
        fee: float,
        reason: str,
        partial: bool,
        order_ts: int | None,
    ) -> None:
        key = self.order_key(order_ts) if order_ts is not None else None
        self.db.execute(
            "INSERT OR IGNORE INTO fills VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ts, kind, "buy" if units > 0 else "sell", units, price, fee, reason, int(partial), key),
        )

    def close_order(self, order_ts: int, status: str) -> None:
        self.db.execute("UPDATE orders SET status = ? WHERE key = ?", (status, self.order_key(order_ts)))

    def add_equity(self, ts: int, equity: float, cash: float, units: float, position: float, financing: float) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO equity VALUES (?, ?, ?, ?, ?, ?)", (ts, equity, cash, units, position, financing)
        )

    def add_event(self, ts: int, kind: str, detail: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO events VALUES (?, ?, ?)", (ts, kind, detail))

    def save_state(self, ts: int, account: dict, pending: float | None) -> None:
        self.db.execute("INSERT OR REPLACE INTO state VALUES (1, ?, ?, ?)", (ts, json.dumps(account), pending))

    def state(self) -> tuple[int, dict, float | None] | None:
        row = self.db.execute("SELECT ts, account, pending FROM state WHERE id = 1").fetchone()
        return None if row is None else (row[0], json.loads(row[1]), row[2])

    def raw_bars(self) -> pd.DataFrame:
        """Every journaled bar as an OHLCV frame on a UTC index (column ``history`` dropped)."""
        df = pd.read_sql_query("SELECT * FROM bars ORDER BY ts", self.db)
        index = pd.to_datetime(df.pop("ts"), unit="ms", utc=True)
        df = df.drop(columns="history").set_axis(OHLCV, axis=1)
        return df.set_axis(pd.DatetimeIndex(index, name=None), axis=0)

    def traded_bars(self) -> int:
        """Bars streamed in the session (the warm-up history not counted)."""
        return self.db.execute("SELECT count(*) FROM bars WHERE history = 0").fetchone()[0]

    def table(self, name: str) -> pd.DataFrame:
        if name not in TABLES:
            raise ValueError(f"unknown journal table {name!r}; tables: {', '.join(TABLES)}")
        # the table name is one of TABLES (checked above), never user text
        query = f"SELECT * FROM {name} ORDER BY ts, rowid"  # nosec B608
        return pd.read_sql_query(query, self.db)

    def close(self) -> None:
        self.db.close()
