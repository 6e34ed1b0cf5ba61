"""``mode=walk_forward``: train, select and test fold after fold in time order, and stitch the
out-of-sample segments into one equity curve.

Fold layout over the data's N bars (``fold_bounds``): F test segments of equal length L tile the
end of the data; the first fold's train + validation take the bars before its test segment in the
``split.train : split.validation : rest`` proportions (so L = N / (F + (train + validation) /
rest)). Fold k's test starts where fold k-1's ended; its validation is the bars right before its
test, its train the bars before that: a window of fixed length (rolling, default) or everything
from the first bar (``walk_forward.expanding``). Each fold is an ordinary run on its own bars
(features and the normaliser fitted on its own train rows), a fresh training, or with
``walk_forward.warm_start`` the previous fold's policy trained on. The stitched curve starts at
the first fold's start equity; every later fold's curve is scaled to begin where the previous
one ended (``stitch``).
"""

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig, open_dict
from rich.console import Console
from rich.table import Table

from src import registry
from src.backtest.metrics import compute_metrics, psr_against
from src.backtest.plots import pyplot
from src.config_checks import ConfigError
from src.splits import SplitBounds
from src.tracking.mlflow_run import mlflow_run

CURVES = ("equity", "buy_and_hold", "random")  # equity.csv columns stitched per contender


@dataclass(frozen=True)
class Fold:
    """Raw bar positions: train [train, validation), validation [validation, test), test [test, end)."""

    train: int
    validation: int
    test: int
    end: int


def fold_bounds(n_bars: int, folds: int, train: float, validation: float, expanding: bool) -> list[Fold]:
    """The folds of a walk-forward over ``n_bars`` (see the module docstring)."""
    rest = 1.0 - train - validation
    if folds < 1 or not (train > 0 and validation > 0 and rest > 0):
        raise ConfigError(
            f"walk_forward.folds={folds}, split.train={train}, split.validation="
            f"{validation}: need folds >= 1 and train + validation < 1"
        )
    test_bars = int(n_bars / (folds + (train + validation) / rest))
    first = n_bars - folds * test_bars  # train + validation of the first fold
    validation_bars = int(first * validation / (train + validation))
    train_bars = first - validation_bars
    if min(test_bars, validation_bars, train_bars) < 1:
        raise ConfigError(
            f"walk_forward.folds={folds} over {n_bars} bars leaves too few bars per fold "
            f"(train {train_bars}, validation {validation_bars}, test {test_bars}); "
            "use fewer folds or more data"
        )
    out = []
    for k in range(folds):
        test = first + k * test_bars
        end = n_bars if k == folds - 1 else test + test_bars
        start = 0 if expanding else test - validation_bars - train_bars
        out.append(Fold(start, test - validation_bars, test, end))
    return out


def stitch(curves: list[pd.Series]) -> pd.Series:
    """One curve from consecutive segments: each segment's first point is the previous segment's
    last bar; it is dropped and the segment scaled to continue from the stitched end."""
    out = [curves[0]]
    for curve in curves[1:]:
        out.append(curve.iloc[1:] * (out[-1].iloc[-1] / curve.iloc[0]))
    return pd.concat(out)


def run_walk_forward(cfg: DictConfig, output_dir: Path, run, market_class) -> dict:
    """Every fold as a child run of one MLflow parent run; returns the stitched metrics as
    {"validation": mean of the folds' validation metrics, agent: stitched test metrics, ...}."""
    raw = registry.build("data", cfg.data)
    folds = fold_bounds(
        len(raw), cfg.walk_forward.folds, cfg.split.train, cfg.split.validation, cfg.walk_forward.expanding
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[pd.Series]] = {name: [] for name in CURVES}
    rows, positions, validations, trades = [], [], [], []
    with mlflow_run(cfg, run_name=f"{cfg.run_name}-walk-forward") as parent:
        warm = None
        for k, fold in enumerate(folds):
            fold_cfg = copy.deepcopy(cfg)
            with open_dict(fold_cfg):
                fold_cfg.run_name = f"{cfg.run_name}-fold{k}"
                fold_cfg.mlflow.parent_run_id = parent.info.run_id
                fold_cfg.agent.warm_start = warm
            bars = raw.iloc[fold.train : fold.end]
            bounds = SplitBounds(fold.validation - fold.train, fold.test - fold.train, fold.end - fold.train)
            folder = output_dir / f"fold{k}"
            metrics = run(fold_cfg, folder, market_class(fold_cfg, raw=bars, bounds=bounds))
            validations.append(metrics["validation"])
            trades.append(
                {
                    name: metrics[name]["trades"]
                    for name in (cfg.agent.name, "buy_and_hold", "random")
                    if name in metrics
                }
            )
            equity = pd.read_csv(folder / "equity.csv", index_col=0, parse_dates=True)
            for name in CURVES:
                curves[name].append(equity[name])
            positions.append(equity["position"].to_numpy()[0 if k == 0 else 1 :])
            rows.append(
                {
                    "fold": k,
                    "train": _span(raw, fold.train, fold.validation),
                    "test": _span(raw, fold.test, fold.end),
                    **{
                        f"{name}_{m}": metrics[name][m]
                        for name in (cfg.agent.name, "buy_and_hold", "random")
                        if name in metrics
                        for m in ("sharpe", "total_return")
                    },
                }
            )
            has_policy = (folder / "policy.pt").is_file()
            warm = str(folder / "policy.pt") if cfg.walk_forward.warm_start and has_policy else None
        stitched = {name: stitch(parts) for name, parts in curves.items()}
        periods = cfg.backtest.periods_per_year
        summary = {
            cfg.agent.name if name == "equity" else name: compute_metrics(
                curve,
                np.concatenate(positions) if name == "equity" else np.ones(len(curve)),
                None,
                periods,
                cfg.backtest.risk_free_rate,
            )
            for name, curve in stitched.items()
        }
        for name, metrics in summary.items():
            metrics["trades"] = float(sum(fold.get(name, 0.0) for fold in trades))  # fills of all folds
            if name != "buy_and_hold":
                metrics["psr_vs_buy_and_hold"] = psr_against(metrics, summary["buy_and_hold"])
        _report(cfg, rows, summary, stitched, [raw.index[f.test] for f in folds], output_dir)
        mlflow.log_metrics({f"walk_forward/{name}/{k}": v for name, m in summary.items() for k, v in m.items()})
        mlflow.log_metrics({f"test/{k}": v for k, v in summary[cfg.agent.name].items()})
        for path in ("walk_forward.json", "stitched.csv", "walk_forward.png"):
            mlflow.log_artifact(str(output_dir / path))
    validation = {k: float(np.mean([v[k] for v in validations])) for k in validations[0]}
    return {"validation": validation, **summary}


def _span(raw: pd.DataFrame, start: int, end: int) -> str:
    return f"{raw.index[start]:%Y-%m-%d}..{raw.index[end - 1]:%Y-%m-%d}"


def _report(cfg, rows, summary, stitched, boundaries, output_dir: Path) -> None:
    agent = cfg.agent.name
    table = Table(
        title=f"Walk-forward: {len(rows)} folds ({'expanding' if cfg.walk_forward.expanding else 'rolling'})",
        caption="Sharpe and total return on each fold's test segment",
    )
    names = (agent, "buy_and_hold", "random")
    table.add_column("fold", no_wrap=True, min_width=8)
    table.add_column("test from", no_wrap=True)
    table.add_column(f"{agent}\nSharpe", justify="right", min_width=len(agent))
    table.add_column(f"{agent}\nreturn", justify="right", min_width=len(agent))
    for name in names[1:]:
        table.add_column(f"{name}\nSharpe", justify="right", min_width=len(name))

    def cells(values: dict) -> list[str]:
        out = [f"{values[f'{agent}_sharpe']:+.2f}", f"{values[f'{agent}_total_return']:+.1%}"]
        return out + [f"{values[f'{n}_sharpe']:+.2f}" if f"{n}_sharpe" in values else "-" for n in names[1:]]

    for row in rows:
        table.add_row(str(row["fold"]), row["test"].split("..")[0], *cells(row))
    stitched_row = {f"{n}_{m}": summary[n][m] for n in names for m in ("sharpe", "total_return")}
    table.add_row("stitched", f"{stitched['equity'].index[0]:%Y-%m-%d}", *cells(stitched_row))
    Console().print(table)
    main = summary[agent]
    Console().print(
        f"stitched {agent}: PSR(Sharpe > 0) = {main['psr']:.2f}, "
        f"PSR(Sharpe > buy_and_hold's) = {main['psr_vs_buy_and_hold']:.2f}"
    )
    frame = pd.DataFrame({agent if n == "equity" else n: c for n, c in stitched.items()})
    frame.to_csv(output_dir / "stitched.csv")
    (output_dir / "walk_forward.json").write_text(json.dumps({"folds": rows, "stitched": summary}, indent=2))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for name in frame:
        ax.plot(frame.index, frame[name] / frame[name].iloc[0], label=name, lw=2 if name == agent else 1)
    for boundary in boundaries:
        ax.axvline(boundary, color="grey", ls="--", lw=0.8)
    ax.set(title="Walk-forward out-of-sample equity (fold boundaries dashed)", ylabel="equity multiple")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output_dir / "walk_forward.png", dpi=100)
    plt.close(fig)
