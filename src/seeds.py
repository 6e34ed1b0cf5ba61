"""``seeds=N``: the same job (any mode) for N seeds, reported as a distribution, not a draw.

Seeds are ``seed, seed + 1, ..., seed + N - 1`` (each seeds the data when the data group uses
``${seed}``, the env and the agent), run one after the other, each a child MLflow run of one
parent. Per metric of the run's agent: mean, standard deviation (ddof 1) and a 95% percentile
bootstrap interval of the mean (``BOOTSTRAP`` resamples, seeded); ``beat_buy_and_hold``: the
fraction of seeds whose test Sharpe exceeds buy-and-hold's in the same seed. The deflated Sharpe
ratio is that of the best seed, deflated for having N seeds to pick from (what reporting the best
seed would claim, discounted). Every seed's equity curve goes in one plot.
"""

import copy
import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.table import Table

from src import registry
from src.backtest.metrics import deflated_sharpe
from src.backtest.plots import pyplot
from src.config_checks import ConfigError
from src.tracking.mlflow_run import mlflow_run

BOOTSTRAP = 2000
SHOWN = ("total_return", "sharpe", "sortino", "max_drawdown", "psr", "psr_vs_buy_and_hold")


def bootstrap_interval(values: np.ndarray, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(BOOTSTRAP, len(values)), replace=True).mean(axis=1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))


def aggregate(per_seed: list[dict[str, float]], hold: list[dict[str, float]], seed: int) -> dict[str, Any]:
    """{metric: {mean, std, ci_low, ci_high, values}} plus beat_buy_and_hold and the DSR."""
    out: dict[str, Any] = {}
    for key in per_seed[0]:
        values = np.array([m[key] for m in per_seed], dtype=float)
        low, high = bootstrap_interval(values, seed)
        out[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "ci_low": low,
            "ci_high": high,
            "values": values.tolist(),
        }
    beats = [m["sharpe"] > h["sharpe"] for m, h in zip(per_seed, hold)]
    best = max(per_seed, key=lambda m: m["sharpe_per_period"])
    out["beat_buy_and_hold"] = float(np.mean(beats))
    out["deflated_sharpe"] = deflated_sharpe(
        best["sharpe_per_period"],
        int(best["n_returns"]),
        best["skewness"],
        best["kurtosis"],
        [m["sharpe_per_period"] for m in per_seed],
    )
    return out


def run_seeds(cfg: DictConfig, output_dir: Path, job) -> dict:
    """``job(cfg, output_dir)`` for every seed under one MLflow parent; returns {"validation":
    mean validation metrics, agent: mean test metrics, "seeds": the aggregate}."""
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    agent = cfg.agent.name
    results, curves = [], {}
    output_dir.mkdir(parents=True, exist_ok=True)
    with mlflow_run(cfg, run_name=f"{cfg.run_name}-seeds{len(seeds)}") as parent:
        for seed in seeds:
            seed_cfg = copy.deepcopy(cfg)
            with open_dict(seed_cfg):
                seed_cfg.seed, seed_cfg.seeds = seed, 1
                seed_cfg.run_name = f"{cfg.run_name}-seed{seed}"
                seed_cfg.mlflow.parent_run_id = parent.info.run_id
            folder = output_dir / f"seed{seed}"
            results.append(job(seed_cfg, folder))
            curve = _equity(folder, agent)
            if curve is not None:
                curves[seed] = curve
        missing = [s for s, r in zip(seeds, results) if agent not in r or "buy_and_hold" not in r]
        if missing:
            raise ConfigError(
                f"seeds={cfg.seeds}: seeds {missing} produced no test metrics for {agent} "
                "and buy_and_hold (evaluate_test=false, or a mode without a test backtest)"
            )
        summary = aggregate([r[agent] for r in results], [r["buy_and_hold"] for r in results], cfg.seed)
        _report(agent, seeds, summary, curves, output_dir)
        mlflow.log_metrics(
            {
                f"seeds/{k}/{stat}": v[stat]
                for k, v in summary.items()
                if isinstance(v, dict) and "mean" in v
                for stat in ("mean", "std", "ci_low", "ci_high")
            }
        )
        mlflow.log_metrics(
            {
                "seeds/beat_buy_and_hold": summary["beat_buy_and_hold"],
                **{f"seeds/dsr/{k}": v for k, v in summary["deflated_sharpe"].items()},
            }
        )
        for name in ("seeds.json", "seeds_equity.png"):
            if (output_dir / name).is_file():
                mlflow.log_artifact(str(output_dir / name))
    validation = {k: float(np.mean([r["validation"][k] for r in results])) for k in results[0]["validation"]}
    mean = {k: v["mean"] for k, v in summary.items() if isinstance(v, dict) and "mean" in v}
    return {"validation": validation, agent: mean, "seeds": summary}


def _equity(folder: Path, agent: str) -> pd.Series | None:
    """A seed's test equity curve: the walk-forward's stitched one, else the run's."""
    for name, column in (("stitched.csv", agent), ("equity.csv", "equity")):
        if (folder / name).is_file():
            return pd.read_csv(folder / name, index_col=0, parse_dates=True)[column]
    return None


def _report(agent: str, seeds: list[int], summary: dict, curves: dict, output_dir: Path) -> None:
    table = Table(
        title=f"{agent} over {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}): test metrics",
        caption="95% CI: percentile bootstrap of the mean",
    )
    for column in ("metric", "mean", "std", "95% CI"):
        table.add_column(column, justify="left" if column == "metric" else "right", no_wrap=True)
    for key in SHOWN:
        if key in summary:
            s = summary[key]
            table.add_row(key, f"{s['mean']:+.3f}", f"{s['std']:.3f}", f"[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]")
    Console().print(table)
    dsr = summary["deflated_sharpe"]
    Console().print(
        f"seeds beating buy_and_hold (test Sharpe): {summary['beat_buy_and_hold']:.0%}; "
        f"best seed's deflated Sharpe ratio {dsr['dsr']:.2f} (N={dsr['trials']:.0f}, "
        f"SR0={dsr['expected_max_sharpe']:.4f}/bar)"
    )
    (output_dir / "seeds.json").write_text(json.dumps({"seeds": seeds, **summary}, indent=2))
    if curves:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(10, 4))
        for seed, curve in curves.items():
            ax.plot(curve.index, curve / curve.iloc[0], lw=1, label=f"seed {seed}")
        ax.set(title=f"{agent}: test equity of every seed", ylabel="equity multiple")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(output_dir / "seeds_equity.png", dpi=100)
        plt.close(fig)


def with_sweep_overrides(cfg: DictConfig) -> DictConfig:
    """``+from_sweep=PATH``: apply the best overrides of a sweep's ``optimization_results.yaml``
    (config values; a group choice there must be given on the command line instead)."""
    path = cfg.get("from_sweep")
    if not path:
        return cfg
    results = Path(path) / "optimization_results.yaml" if Path(path).is_dir() else Path(path)
    if not results.is_file():
        raise FileNotFoundError(f"from_sweep={path}: no optimization_results.yaml there")
    out = copy.deepcopy(cfg)
    for line in OmegaConf.load(results).best_overrides:
        key, value = line.lstrip("+").split("=", 1)
        if "." not in key and key in registry.GROUPS:
            raise ConfigError(f"from_sweep: {results} chose {line!r}, a config group; pass {line} on the command line")
        OmegaConf.update(out, key, yaml.safe_load(value), force_add=True)
    print(f"from_sweep: {results}: {', '.join(OmegaConf.load(results).best_overrides)}")
    return out
