"""PNG plots of a backtest: equity vs buy-and-hold, drawdown, return distribution."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def save_plots(equity_curves: dict[str, pd.Series], out_dir: Path, highlight: str) -> list[Path]:
    """Write equity.png, drawdown.png and returns.png for ``highlight`` (others for comparison)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, equity in equity_curves.items():
        ax.plot(equity.index, equity / equity.iloc[0], label=name, lw=2 if name == highlight else 1)
    ax.set(title="Equity on the test split (start = 1)", ylabel="equity multiple")
    ax.legend()
    paths.append(_save(fig, out_dir / "equity.png"))
    equity = equity_curves[highlight]
    fig, ax = plt.subplots(figsize=(10, 3))
    drawdown = equity / equity.cummax() - 1.0
    ax.fill_between(drawdown.index, drawdown.to_numpy(), 0.0, color="tab:red", alpha=0.5)
    ax.set(title=f"Drawdown of {highlight}", ylabel="drawdown")
    paths.append(_save(fig, out_dir / "drawdown.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(equity.pct_change().dropna().to_numpy(), bins=80, color="tab:blue")
    ax.set(title=f"Per-bar returns of {highlight}", xlabel="return", ylabel="bars")
    paths.append(_save(fig, out_dir / "returns.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
