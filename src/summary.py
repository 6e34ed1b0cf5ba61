"""The end-of-run comparison: a rich table on the terminal and the same numbers as JSON."""

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

COLUMNS = [  # (metric key, header, format)
    ("total_return", "Total return", "{:+.2%}"),
    ("sharpe", "Sharpe", "{:+.2f}"),
    ("sortino", "Sortino", "{:+.2f}"),
    ("max_drawdown", "Max drawdown", "{:.2%}"),
    ("trades", "Trades", "{:.0f}"),
    ("psr", "PSR", "{:.2f}"),  # P(true Sharpe > 0), src/backtest/metrics.py
]


def summary_table(metrics_by_agent: dict[str, dict[str, float]], title: str) -> Table:
    table = Table(title=title)
    table.add_column("Agent", style="bold", no_wrap=True, min_width=max(map(len, metrics_by_agent)))
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for agent, metrics in metrics_by_agent.items():
        table.add_row(agent, *(fmt.format(metrics[key]) for key, _, fmt in COLUMNS))
    return table


def report(
    metrics_by_agent: dict[str, dict[str, float]], title: str, json_path: Path, injected: list | None = None
) -> None:
    """Print the comparison table and write every metric of every agent to ``json_path``, with
    the (first, last) timestamps of what the scenario ``injected``."""
    Console().print(summary_table(metrics_by_agent, title))
    windows = [[str(first), str(last)] for first, last in injected or []]
    json_path.write_text(json.dumps({"title": title, "agents": metrics_by_agent, "injected": windows}, indent=2))


def stress_report(table: dict[str, dict[str, dict[str, float]]], agent: str, json_path: Path) -> None:
    """Print {scenario: {agent: metrics}}, one row per scenario and agent, with the change of
    Sharpe against scenario ``none``; write the same to ``json_path``."""
    baseline = table.get("none", {})
    out = Table(title=f"Stress test of {agent} (Sharpe change vs none)")
    for column in ("Scenario", "Agent"):  # identifiers are never cut: widest name wide, no wrap
        widest = max(len(n) for n in (table if column == "Scenario" else {a for m in table.values() for a in m}))
        out.add_column(column, no_wrap=True, min_width=widest)
    for column in ("Return", "Sharpe", "dSharpe", "MaxDD", "Trades"):
        out.add_column(column, justify="right")
    for scenario, by_agent in table.items():
        for name, m in by_agent.items():
            delta = m["sharpe"] - baseline[name]["sharpe"] if name in baseline else float("nan")
            out.add_row(
                scenario,
                name,
                f"{m['total_return']:+.2%}",
                f"{m['sharpe']:+.2f}",
                f"{delta:+.2f}",
                f"{m['max_drawdown']:.2%}",
                f"{m['trades']:.0f}",
            )
    Console().print(out)
    json_path.write_text(json.dumps(table, indent=2))
