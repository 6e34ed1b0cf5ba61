"""A paper-trading session: closed bars in, the backtest's decisions and fills out, journaled.

For every closed bar, in one journal transaction: the bar; the fill of the target decided at the
previous bar (``PaperBroker``: the backtest kernel over those two bars); the observation (the batch
feature pipeline on the bars so far) and the agent's decision for the next bar. Decision latency
runs from the bar's arrival to the decided target. When the session ends (``feed.max_bars``,
``feed.duration``, the feed's end, Ctrl-C or SIGTERM) the journal is replayed through the
backtester (``parity``) and ``paper_summary.json`` says ``parity: identical`` or names the first
bar that differs. Restarting with the same ``paper.session`` resumes from the last journaled bar.
"""

import asyncio
import hashlib
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import Metric
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.live import Live
from rich.table import Table

from src import registry
from src.agents.base import Agent
from src.backtest.engine import fill_rows
from src.config_checks import ConfigError, plain_dict
from src.data.timeframes import periods_per_year
from src.envs import kernels
from src.envs.actions import ActionSpace
from src.envs.torchrl_env import market_rules
from src.live.broker import PaperBroker
from src.live.feeds import Stale
from src.live.journal import Journal
from src.live.observe import Observer
from src.live.testnet import TestnetBroker

log = logging.getLogger(__name__)


def session_name(cfg: DictConfig) -> str:
    return cfg.paper.session or f"{cfg.agent.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def journal_path(cfg: DictConfig, session: str) -> Path:
    return Path(cfg.paper.journal_dir) / f"{session}.db"


def live_config(cfg: DictConfig, journal: Journal) -> DictConfig:
    """``cfg`` with ``backtest.periods_per_year`` fixed from the session's warm-up history (unless
    configured), so the per-bar financing of the session, of its resumption and of its parity
    replay are the same numbers."""
    history = journal.table("bars").query("history == 1").ts
    stamps = pd.DatetimeIndex(pd.to_datetime(history, unit="ms", utc=True))
    periods = cfg.backtest.periods_per_year or periods_per_year(stamps)
    out = cfg.copy()
    out.backtest = OmegaConf.merge(out.backtest, {"periods_per_year": float(periods)})
    return out


@dataclass
class Stats:
    """What the panel, the summary and MLflow show."""

    bars: int = 0
    decisions: int = 0
    fills: int = 0
    latency_ms: list = field(default_factory=list)
    stale_events: int = 0
    last_bar: pd.Timestamp | None = None
    equity: float = 0.0
    position: float = 0.0


class Session:
    """One paper-trading session of ``agent`` (see the module docstring)."""

    def __init__(
        self, cfg: DictConfig, agent: Agent, actions: ActionSpace, featurize, contract: dict, journal: Journal
    ):
        self.cfg, self.agent, self.actions, self.journal = live_config(cfg, journal), agent, actions, journal
        self.observer = Observer(
            featurize,
            self.cfg.backtest,
            cfg.env.window_size,
            contract["normalize"].get("stats", {}),
            contract["features"],
        )
        self.capital = float(self.cfg.backtest.initial_cash)
        self.stats = Stats()
        self.raw = journal.raw_bars()
        rules = market_rules(self.cfg.env, self.cfg.backtest, self.raw.index)
        self.broker = PaperBroker(rules, self.capital)
        self.pending: tuple[float, int] | None = None  # (target, open time ms of the bar that decided it)
        saved = journal.state()
        if saved is not None:
            decided_at, account, target = saved
            self.pending = None if target is None else (target, decided_at)
            self.broker.load(account)
        self.stats.equity = float(self.broker.equity[0]) * self.capital
        self.metrics: list[Metric] = []
        self.exchange = TestnetBroker(cfg.data, cfg.broker, journal) if cfg.broker.name == "ccxt_testnet" else None

    def on_bar(self, candle) -> None:
        """Everything one closed bar causes, in one journal transaction."""
        received = time.perf_counter()
        stamp = pd.Timestamp(candle[0], unit="ms", tz="UTC")
        self.raw.loc[stamp] = candle[1:]
        frame = self.observer.frame(self.raw)
        with self.journal.bar():
            self.journal.add_bar(candle)
            if self.pending is not None and frame is not None and len(frame) >= 2:
                self._fill(frame.iloc[-2:], candle[0], *self.pending)
            observation = None if frame is None else self.observer.window(frame)
            target = None
            if frame is not None and observation is not None:
                target = self._decide(frame, observation)
                latency = (time.perf_counter() - received) * 1e3
                digest = hashlib.sha256(observation.tobytes()).hexdigest()[:16]
                self.journal.add_decision(candle[0], digest, target, target, latency)
                self.stats.latency_ms.append(latency)
                self.stats.decisions += 1
            self.pending = None if target is None else (target, candle[0])
            self.journal.save_state(candle[0], self.broker.state(), target)
        self.stats.bars += 1
        self.stats.last_bar = stamp

    def _decide(self, frame: pd.DataFrame, observation: np.ndarray) -> float:
        """The agent's target for the next bar, from the window ending at this bar."""
        if hasattr(self.agent, "signals"):
            action = self.agent.signals(frame)[-1:]
        else:
            action = self.agent.act(torch.from_numpy(observation), torch.from_numpy(self.broker.account))
        return float(self.actions.to_targets(torch.as_tensor(action))[0])

    def _fill(self, rows: pd.DataFrame, ts: int, target: float, decided_at: int) -> None:
        """Execute ``target`` (decided at bar ``decided_at``) over (decision bar, this bar);
        journal fills and equity."""
        fills = self.broker.step(target, rows)
        for _stamp, _side, units, price, fee, reason, partial in fill_rows(fills, rows.index[-1]):
            kind = "order" if reason == "signal" else "exit"
            self.journal.add_fill(
                ts, kind, units * self.capital, price, fee * self.capital, reason, partial, decided_at
            )
            if self.exchange is not None:
                self.exchange.mirror(self.journal.order_key(decided_at), kind, ts, units * self.capital)
            self.stats.fills += 1
        self.journal.close_order(decided_at, "filled" if fills[kernels.ENTRY_UNITS] else "no_trade")
        equity, cash = float(self.broker.equity[0]), float(self.broker.cash[0])
        self.journal.add_equity(
            ts,
            equity * self.capital,
            cash * self.capital,
            float(self.broker.units[0]) * self.capital,
            float(self.broker.account[0, 0]),
            fills[kernels.FINANCING] * self.capital,
        )
        self.stats.equity, self.stats.position = equity * self.capital, float(self.broker.account[0, 0])
        step = self.stats.bars
        now = int(time.time() * 1000)
        self.metrics += [
            Metric("paper/equity", self.stats.equity, now, step),
            Metric("paper/position", self.stats.position, now, step),
        ]
        if self.stats.latency_ms:
            self.metrics.append(Metric("paper/latency_ms", self.stats.latency_ms[-1], now, step))

    def on_stale(self, marker: Stale) -> None:
        """No bar for a while: no new order; flatten at the last close (``on_stale=flatten``)."""
        self.stats.stale_events += 1
        log.warning("feed stale for %.0fs after %s", marker.seconds, pd.Timestamp(marker.since, unit="ms", tz="UTC"))
        with self.journal.bar():
            self.journal.add_event(marker.since, "stale", f"{marker.seconds:.1f}s without a bar")
            if self.pending is not None:
                self.journal.close_order(self.pending[1], "cancelled_stale")
            self.pending = None
            holding = self.cfg.paper.on_stale == "flatten" and self.broker.units[0] != 0
            frame = self.observer.frame(self.raw) if holding else None
            if frame is not None:
                fills = self.broker.flatten(frame.iloc[-1:])
                for _, _, units, price, fee, _, partial in fill_rows(fills, frame.index[-1]):
                    self.journal.add_fill(
                        marker.since,
                        "stale",
                        units * self.capital,
                        price,
                        fee * self.capital,
                        "stale_flatten",
                        partial,
                        None,
                    )
            self.journal.save_state(marker.since, self.broker.state(), None)

    def flush_metrics(self) -> None:
        run = mlflow.active_run()
        if self.metrics and run is not None:
            mlflow.MlflowClient().log_batch(run.info.run_id, metrics=self.metrics)
        self.metrics = []

    def panel(self) -> Table:
        s = self.stats
        table = Table(title=f"Paper session {self.journal.session} ({self.cfg.feed.name} feed)")
        for column in ("last bar", "position", "equity", "P&L", "fills", "feed lag", "latency p50/p99"):
            table.add_column(column, justify="right")
        lag = (pd.Timestamp.now(tz="UTC") - s.last_bar).total_seconds() if s.last_bar is not None else 0
        p50, p99 = np.percentile(s.latency_ms, [50, 99]) if s.latency_ms else (0.0, 0.0)
        table.add_row(
            f"{s.last_bar:%Y-%m-%d %H:%M}" if s.last_bar is not None else "-",
            f"{s.position:+.2f}",
            f"{s.equity:,.2f}",
            f"{s.equity - self.capital:+,.2f}",
            str(s.fills),
            "replay" if self.cfg.feed.name == "replay" else f"{lag:.1f}s",
            f"{p50:.2f} / {p99:.2f} ms",
        )
        return table


async def run_feed(session: Session, feed, max_bars: int | None, duration: float | None) -> str:
    """Consume ``feed`` until it ends, ``max_bars`` bars, ``duration`` seconds or a signal;
    returns why it stopped."""
    started = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    after = int(session.raw.index[-1].value // 1_000_000)

    async def consume() -> str:
        async for item in feed.stream(after=after):
            if isinstance(item, Stale):
                session.on_stale(item)
                continue
            session.on_bar(item)
            if len(session.metrics) >= 200:
                session.flush_metrics()
            if max_bars is not None and session.stats.bars >= max_bars:
                return "max_bars"
        return "feed ended"

    task = asyncio.create_task(consume())
    stopper = asyncio.create_task(stop.wait())
    live = (
        Live(session.panel(), refresh_per_second=4, console=Console(stderr=True), transient=False, auto_refresh=True)
        if session.cfg.paper.panel
        else None
    )
    try:
        if live:
            live.start()
        while True:
            done, _ = await asyncio.wait({task, stopper}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
            if live:
                live.update(session.panel())
            if task in done:
                return task.result()
            if stopper in done:
                return "signal"
            if duration is not None and time.monotonic() - started > duration:
                return "duration"
    finally:
        for pending in (task, stopper):
            pending.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
        if live:
            live.update(session.panel())
            live.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await feed.close()


@dataclass
class Parity:
    """The journal replayed through the backtester: ``identical``, or the first differing bar."""

    identical: bool
    bars: int
    first_difference: str | None = None

    @property
    def line(self) -> str:
        return "parity: identical" if self.identical else f"parity: differs at {self.first_difference}"


def parity(cfg: DictConfig, journal: Journal, agent: Agent, actions: ActionSpace, featurize, contract: dict) -> Parity:
    """Replay the journaled bars through the backtester (a fresh ``agent`` from the same
    checkpoint or seed) and compare fills and equity with the journal, bit for bit."""
    cfg = live_config(cfg, journal)
    equity = journal.table("equity")
    decisions = journal.table("decisions")
    if equity.empty:
        return Parity(True, 0)
    observer = Observer(
        featurize, cfg.backtest, cfg.env.window_size, contract["normalize"].get("stats", {}), contract["features"]
    )
    frame = observer.frame(journal.raw_bars())
    if frame is None:
        raise ValueError(f"paper journal {journal.path}: too few bars for the features' warm-up to replay")
    first = frame.index.get_loc(pd.Timestamp(int(decisions.ts.iloc[0]), unit="ms", tz="UTC"))
    last = frame.index.get_loc(pd.Timestamp(int(equity.ts.iloc[-1]), unit="ms", tz="UTC"))
    df = frame.iloc[first - cfg.env.window_size + 1 : last + 1]
    backtester = registry.build("backtest", cfg.backtest, cfg.env, actions)
    result = backtester.run(agent, df, close_at_end=False)
    journaled = journal.table("fills")
    journaled = journaled[journaled.kind != "stale"]
    ours = result.trades.assign(ts=result.trades.timestamp.map(lambda t: t.value // 1_000_000))
    for k in range(max(len(ours), len(journaled))):
        if k >= len(ours) or k >= len(journaled):
            row = (ours if k < len(ours) else journaled).iloc[k]
            return Parity(False, len(equity), f"{_stamp(row.ts)} (a fill only one side has)")
        a, b = ours.iloc[k], journaled.iloc[k]
        if (int(a.ts), a.units, a.price, a.fee, a.reason) != (int(b.ts), b.units, b.price, b.fee, b.reason):
            return Parity(
                False,
                len(equity),
                f"{_stamp(min(int(a.ts), int(b.ts)))} (fill: backtest "
                f"{a.units:.6g}@{a.price:.6g} {a.reason}, journal {b.units:.6g}@{b.price:.6g} {b.reason})",
            )
    curve = result.equity.iloc[1:]
    if len(curve) != len(equity):
        return Parity(False, len(equity), f"{len(curve)} backtest bars vs {len(equity)} journaled")
    different = np.flatnonzero(curve.to_numpy() != equity.equity.to_numpy())
    if len(different):
        k = different[0]
        return Parity(
            False,
            len(equity),
            f"{_stamp(int(equity.ts.iloc[k]))} (equity: backtest {curve.iloc[k]!r}, journal {equity.equity.iloc[k]!r})",
        )
    return Parity(True, len(equity))


def _stamp(ms: int) -> str:
    return f"{pd.Timestamp(ms, unit='ms', tz='UTC'):%Y-%m-%d %H:%M}"


def summary(session: Session, check: Parity, stopped: str, counts: dict) -> dict:
    """The session's figures (what ``paper_summary.json`` holds)."""
    fills = session.journal.table("fills")
    latency = np.asarray(session.stats.latency_ms or [np.nan])
    equity = session.journal.table("equity")
    final = float(equity.equity.iloc[-1]) if len(equity) else session.capital
    return {
        "session": session.journal.session,
        "feed": session.cfg.feed.name,
        "stopped": stopped,
        "bars": session.journal.traded_bars(),
        "decisions": int(len(session.journal.table("decisions"))),
        "trades": int(len(fills)),
        "equity": final,
        "pnl": final - session.capital,
        "return": final / session.capital - 1,
        "parity": check.line,
        "parity_bars": check.bars,
        "latency_ms": {
            "p50": float(np.percentile(latency, 50)),
            "p99": float(np.percentile(latency, 99)),
            "max": float(latency.max()),
        },
        "stale_events": session.stats.stale_events,
        **counts,
    }


def print_summary(result: dict) -> None:
    table = Table(title=f"Paper session {result['session']} ({result['stopped']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    latency = result["latency_ms"]
    for name, value in [
        ("bars", result["bars"]),
        ("decisions", result["decisions"]),
        ("trades", result["trades"]),
        ("P&L", f"{result['pnl']:+,.2f}"),
        ("return", f"{result['return']:+.2%}"),
        ("parity", result["parity"]),
        ("latency p50 / p99 / max", f"{latency['p50']:.2f} / {latency['p99']:.2f} / {latency['max']:.2f} ms"),
    ]:
        table.add_row(name, str(value))
    Console().print(table)


def paper_trade(
    cfg: DictConfig,
    raw: pd.DataFrame,
    stream_from: int,
    agent_factory,
    featurize,
    contract: dict,
    checkpoint: Path | None,
    output_dir: Path,
) -> dict:
    """Run (or resume) the session ``paper.session``; returns its summary (also written to
    ``output_dir/paper_summary.json`` and logged to the active MLflow run)."""
    name = session_name(cfg)
    journal = Journal(journal_path(cfg, name), name)
    try:
        feed = registry.build("feed", cfg.feed, cfg.data, raw, stream_from)
        if journal.raw_bars().empty:
            history = (
                raw.iloc[max(stream_from - cfg.paper.history_bars, 0) : stream_from]
                if cfg.feed.name == "replay"
                else feed.history(cfg.paper.history_bars)
            )
            journal.add_history(history)
            journal.set_meta(
                config=plain_dict(cfg),
                checkpoint=str(checkpoint) if checkpoint else None,
                mlflow_run_id=run.info.run_id if (run := mlflow.active_run()) else None,
                contract=contract,
            )
        agent, actions = agent_factory()
        session = Session(cfg, agent, actions, featurize, contract, journal)
        max_bars = cfg.feed.max_bars
        if max_bars is not None:  # a resumed session counts the bars it already traded
            max_bars -= journal.traded_bars()
        stopped = (
            asyncio.run(run_feed(session, feed, max_bars, cfg.feed.duration))
            if (max_bars is None or max_bars > 0)
            else "max_bars"
        )
        session.flush_metrics()
        fresh, fresh_actions = agent_factory()
        check = parity(cfg, journal, fresh, fresh_actions, featurize, contract)
        result = summary(session, check, stopped, feed.counts)
    finally:
        journal.close()
    print_summary(result)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "paper_summary.json"
    path.write_text(json.dumps(result, indent=2))
    if mlflow.active_run() is not None:
        latency = result["latency_ms"]
        mlflow.log_metrics(
            {
                "paper/latency_p50_ms": latency["p50"],
                "paper/latency_p99_ms": latency["p99"],
                "paper/latency_max_ms": latency["max"],
                "paper/pnl": result["pnl"],
                "paper/parity_identical": float(check.identical),
            }
        )
        mlflow.set_tag("paper.parity", check.line)
        mlflow.log_artifact(str(path))
        mlflow.log_artifact(str(journal_path(cfg, name)))
    return result


def stored_meta(cfg: DictConfig) -> dict:
    """The journal meta of session ``paper.session`` (empty for a new session)."""
    if not cfg.paper.session or not journal_path(cfg, cfg.paper.session).is_file():
        return {}
    journal = Journal(journal_path(cfg, cfg.paper.session), cfg.paper.session)
    try:
        return journal.meta()
    finally:
        journal.close()


def replay_journal(cfg: DictConfig) -> Parity:
    """``mode=replay_journal``: the stored session's bars through the backtester, compared."""
    if not cfg.paper.session:
        raise ConfigError(f"mode=replay_journal needs paper.session=NAME (a journal in {cfg.paper.journal_dir}/)")
    path = journal_path(cfg, cfg.paper.session)
    if not path.is_file():
        raise FileNotFoundError(f"paper.session={cfg.paper.session}: no journal {path}")
    journal = Journal(path, cfg.paper.session)
    try:
        meta = journal.meta()
        stored = OmegaConf.create(meta["config"])
        featurize = registry.build("features", stored.features)
        observer = Observer(
            featurize,
            stored.backtest,
            stored.env.window_size,
            meta["contract"]["normalize"].get("stats", {}),
            meta["contract"]["features"],
        )
        env = registry.build("env", stored.env, observer.frame(journal.raw_bars()), seed=stored.seed, num_envs=1)
        agent = registry.build("agent", stored.agent, env, seed=stored.seed)
        if meta.get("checkpoint"):
            agent.load(Path(meta["checkpoint"]), meta["contract"])
        check = parity(stored, journal, agent, env.actions, featurize, meta["contract"])
    finally:
        journal.close()
    Console().print(f"{cfg.paper.session}: {check.bars} bars, {check.line}")
    return check
