"""PNG plots of a backtest and a self-contained HTML report of them.

Plots: equity vs the other agents (buy-and-hold among them), drawdown, returns distribution,
position over time, rolling Sharpe. ``marks`` (start, end) timestamps shade a window, e.g. the
bars a scenario injected.
"""

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.backtest.metrics import rolling_sharpe
from src.scenarios import Marks


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, imported when a plot is drawn (it costs
    a run without plots over half a second of start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plots(
    equity_curves: dict[str, pd.Series],
    positions: np.ndarray,
    out_dir: Path,
    highlight: str,
    periods: float,
    marks: Marks | None = None,
) -> list[Path]:
    """Write equity/drawdown/returns/position/rolling_sharpe PNGs for ``highlight``."""
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    marks = marks or []
    equity = equity_curves[highlight]
    returns = equity.pct_change().dropna()
    paths = []

    fig, ax = plt.subplots(figsize=(10, 4))
    for name, curve in equity_curves.items():
        ax.plot(curve.index, curve / curve.iloc[0], label=name, lw=2 if name == highlight else 1)
    ax.set(title="Equity (start = 1)", ylabel="equity multiple")
    ax.legend()
    paths.append(_save(fig, ax, out_dir / "equity.png", marks))

    fig, ax = plt.subplots(figsize=(10, 3))
    drawdown = equity / equity.cummax() - 1.0
    ax.fill_between(drawdown.index, drawdown.to_numpy(), 0.0, color="tab:red", alpha=0.5)
    ax.set(title=f"Drawdown of {highlight}", ylabel="drawdown")
    paths.append(_save(fig, ax, out_dir / "drawdown.png", marks))

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(returns.to_numpy(), bins=80, color="tab:blue")
    ax.set(title=f"Per-bar returns of {highlight}", xlabel="return", ylabel="bars")
    paths.append(_save(fig, ax, out_dir / "returns.png", []))

    fig, ax = plt.subplots(figsize=(10, 3))
    ax.step(equity.index, positions[: len(equity)], where="post", color="tab:green")
    ax.set(title=f"Position of {highlight} (fraction of equity)", ylabel="position")
    paths.append(_save(fig, ax, out_dir / "position.png", marks))

    fig, ax = plt.subplots(figsize=(10, 3))
    rolling, window = rolling_sharpe(returns, periods)
    ax.plot(rolling.index, rolling.to_numpy(), color="tab:purple")
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set(title=f"Rolling Sharpe of {highlight} ({window} bars)", ylabel="Sharpe")
    paths.append(_save(fig, ax, out_dir / "rolling_sharpe.png", marks))
    return paths


def _save(fig, ax, path: Path, marks: Marks) -> Path:
    for start, end in marks:
        ax.axvspan(start, end, color="orange", alpha=0.25, label="injected")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    pyplot().close(fig)
    return path


def html_report(
    title: str, metrics: dict[str, dict[str, float]], images: list[Path], trades: pd.DataFrame, path: Path
) -> Path:
    """One self-contained HTML file: metrics table, embedded plots, the first trades."""
    names = list(metrics)
    keys = list(dict.fromkeys(k for m in metrics.values() for k in m))  # a metric not every agent has: blank
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th>"
        + "".join(f"<td>{metrics[n][k]:.4g}</td>" if k in metrics[n] else "<td></td>" for n in names)
        + "</tr>"
        for k in keys
    )
    table = f"<table><tr><th></th>{''.join(f'<th>{html.escape(n)}</th>' for n in names)}</tr>{rows}</table>"
    pictures = "".join(
        f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for p in images
    )
    style = (
        "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} "
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right} img{max-width:100%;display:block}"
    )
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<h2>Metrics</h2>{table}<h2>Plots</h2>{pictures}<h2>Trades (first 200)</h2>"
        f"{trades.head(200).to_html(index=False)}</body></html>"
    )
    return path


def heatmap(values: pd.DataFrame, title: str, path: Path) -> Path:
    """A labelled heatmap of ``values`` (rows x columns, e.g. a metric over two parameters);
    empty cells (NaN) stay blank."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * values.shape[1], 1.0 + 0.6 * values.shape[0]))
    image = ax.imshow(values.to_numpy(float), cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in values.columns])
    ax.set_yticks(range(values.shape[0]), [str(i) for i in values.index])
    ax.set(xlabel=values.columns.name, ylabel=values.index.name, title=title)
    for (row, column), value in np.ndenumerate(values.to_numpy(float)):
        if np.isfinite(value):
            ax.text(column, row, f"{value:+.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
