"""``mode=grid``: a rule strategy's parameter grid, every combination an env of one kernel call.

``grid.params`` maps the agent's parameters to the values to try (default: ``sma_cross``'s
``fast`` x ``slow``); combinations the agent refuses (e.g. fast >= slow) are skipped. Every
combination's target path (``agent.signals``) is backtested on the validation split at once, in
one kernel call over every bar, under the backtest's costs and rules
(``Backtester.target_metrics``: each cell's metrics equal that combination's own backtest's).
The best by ``grid.metric`` on validation is then backtested on the test split, alone: the test
figures are reported separately and never take part in the choice.
"""

import itertools
import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from src import registry
from src.backtest.plots import heatmap
from src.config_checks import ConfigError, plain_dict
from src.scenarios import scenario_names
from src.summary import report


def combinations(cfg, env) -> list[tuple[dict, Any]]:
    """(params, agent) for every combination of ``grid.params`` the agent accepts."""
    if not hasattr(registry.build("agent", cfg.agent, env, seed=cfg.seed), "signals"):
        raise ConfigError(
            f"mode=grid needs a rule agent with signals(df) (agent=sma_cross); agent={cfg.agent.name} has none"
        )
    names = list(cfg.grid.params)
    base = plain_dict(cfg.agent)
    out = []
    for values in itertools.product(*(cfg.grid.params[name] for name in names)):
        params = dict(zip(names, values))
        try:
            agent = registry.build("agent", OmegaConf.create({**base, **params}), env, seed=cfg.seed)
        except ValueError:
            continue  # e.g. sma_cross with fast >= slow
        out.append((params, agent))
    if not out:
        raise ConfigError(f"grid.params={plain_dict(cfg.grid.params)}: no valid combination")
    return out


def grid_search(cfg, market, backtester, env, output_dir: Path) -> dict:
    """Run the grid; returns {"validation": best's validation metrics, agent: test metrics, ...}."""
    cells = combinations(cfg, env)
    validation_df = market.validation()
    targets = np.column_stack([env.actions.to_targets(agent.signals(validation_df)).reshape(-1) for _, agent in cells])
    results = backtester.target_metrics(targets, validation_df)
    table = pd.DataFrame(
        [{**params, **{f"val_{k}": v for k, v in m.items()}} for (params, _), m in zip(cells, results)]
    )
    metric = f"val_{cfg.grid.metric}"
    best = int(table[metric].to_numpy().argmax())
    best_params, best_agent = cells[best]
    table = table.sort_values(metric, ascending=False)
    table.to_csv(output_dir / "grid.csv", index=False)
    artifacts = [output_dir / "grid.csv"]
    Console().print(_top_table(table, list(best_params), metric, cfg.grid.top))
    names = list(best_params)
    if len(names) == 2:
        values = table.pivot_table(index=names[0], columns=names[1], values=metric)
        artifacts.append(
            heatmap(
                values, f"{metric} on validation ({len(cells)} combinations)", output_dir / "plots" / "grid_heatmap.png"
            )
        )
    mlflow.log_params({f"grid.best.{k}": v for k, v in best_params.items()})
    mlflow.log_metrics({f"grid/best_{k}": v for k, v in results[best].items()})
    mlflow.log_metric("grid/combinations", len(cells))
    test_df, marks = market.test(cfg.scenario)
    label = f"{cfg.agent.name}(" + ", ".join(f"{k}={v}" for k, v in best_params.items()) + ")"
    contenders = {label: best_agent}
    contenders.setdefault(
        "buy_and_hold", registry.build("agent", OmegaConf.create({"name": "buy_and_hold"}), env, seed=cfg.seed)
    )
    tested = {name: backtester.run(agent, test_df).metrics for name, agent in contenders.items()}
    mlflow.log_metrics({f"test/{k}": v for k, v in tested[label].items()})
    report(
        tested,
        f"Test split: the validation's best of the grid, scenario={scenario_names(cfg.scenario)}",
        output_dir / "summary.json",
        marks,
    )
    (output_dir / "grid_best.json").write_text(
        json.dumps({"params": best_params, "validation": results[best], "test": tested[label]}, indent=2)
    )
    artifacts += [output_dir / "summary.json", output_dir / "grid_best.json"]
    for path in artifacts:
        folder = path.parent.relative_to(output_dir).as_posix()
        mlflow.log_artifact(str(path), artifact_path=None if folder == "." else folder)
    return {
        "validation": results[best],
        cfg.agent.name: tested[label],
        "buy_and_hold": tested["buy_and_hold"],
        "grid": {"best": best_params},
    }


def _top_table(table: pd.DataFrame, params: list[str], metric: str, top: int) -> Table:
    out = Table(title=f"Grid: top {min(top, len(table))} of {len(table)} by {metric} (validation)")
    for column in params + ["val Sharpe", "val return", "val max DD", "val trades"]:
        out.add_column(column, justify="right")
    for _, row in table.head(top).iterrows():
        out.add_row(
            *(f"{row[p]:g}" for p in params),
            f"{row['val_sharpe']:+.2f}",
            f"{row['val_total_return']:+.2%}",
            f"{row['val_max_drawdown']:.2%}",
            f"{row['val_trades']:.0f}",
        )
    return out
