"""One run: data -> features -> split -> scenario -> train -> backtest -> MLflow.

``python -m src.run [group=option ...] [key=value ...]``; see conf/config.yaml.
"""
import random
import sys
import time
from pathlib import Path

import hydra
import mlflow
import numpy as np
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from src import registry
from src.agents.baselines import BuyAndHold, RandomAgent
from src.backtest.engine import Execution
from src.backtest.plots import save_plots
from src.backtest.sizing import with_risk_columns
from src.data.ccxt_source import ExchangeConfigError
from src.data.validate import DataValidationError
from src.splits import split_bounds, with_history
from src.summary import report
from src.tracking import listeners
from src.tracking.mlflow_run import mlflow_run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_data(cfg: DictConfig) -> dict[str, pd.DataFrame | Execution]:
    """Train / validation / test frames (OHLCV + features), the test one under the scenario.

    The scenario stresses raw bars from the test split's first bar on; features are then
    recomputed on the whole stressed history (they only look back, so train is unchanged).
    """
    raw = registry.build("data", cfg.data)
    quality = raw.attrs.get("data_quality")
    bounds = split_bounds(len(raw), cfg.split.train, cfg.split.validation)
    featurize = registry.build("features", cfg.features)
    clean = with_risk_columns(featurize(raw, fit_rows=bounds.validation), cfg.backtest)
    execution = Execution(cfg.env.transaction_fee, cfg.env.slippage_bps)
    stressed_raw, test_execution = registry.build("scenario", cfg.scenario)(raw, execution, bounds.test)
    stressed = (with_risk_columns(featurize(stressed_raw, fit_rows=bounds.validation), cfg.backtest)
                if stressed_raw is not raw else clean)
    shift = featurize.warmup_rows  # feature rows start after the indicators' warm-up
    history = cfg.env.window_size - 1
    val_start, test_start = bounds.validation - shift, bounds.test - shift
    if val_start <= cfg.env.window_size + cfg.env.episode_length:
        raise ValueError(f"train split has {val_start} bars after feature warm-up: too few for "
                         f"window_size + episode_length; use more data (data.n_bars)")
    return {
        "quality": {"data_quality.bars": len(raw), "features.warmup_rows": shift,
                    **{f"data_quality.{k}": v for k, v in (quality or {}).items()}},
        "train": clean.iloc[:val_start],
        "validation": with_history(clean, val_start, test_start, history),
        "test": with_history(stressed, test_start, len(stressed), history),
        "test_execution": test_execution,
    }


def run(cfg: DictConfig, output_dir: Path) -> dict[str, dict[str, float]]:
    """Run one job described by ``cfg``; returns {agent name: test metrics, "validation":
    validation metrics of the run's agent (what sweeps select on)}."""
    started = time.perf_counter()
    registry.validate(cfg)
    registry.build("resources", cfg.resources)
    seed_everything(cfg.seed)
    data = prepare_data(cfg)
    risk = cfg.backtest if cfg.backtest.apply_in_training else None
    train_env = registry.build("env", cfg.env, data["train"], seed=cfg.seed, risk=risk)
    agent = registry.build("agent", cfg.agent, train_env, seed=cfg.seed)
    backtester = registry.build("backtest", cfg.backtest, cfg.env, train_env.actions)
    validation_execution = Execution(cfg.env.transaction_fee, cfg.env.slippage_bps)
    with mlflow_run(cfg, run_name=cfg.run_name):
        mlflow.log_params(data["quality"])
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        checkpoint = cfg.agent.get("checkpoint")
        if checkpoint:
            agent.load(Path(checkpoint))
        else:
            agent.fit(train_env, _log_metrics,
                      lambda a: backtester.run(a, data["validation"], validation_execution).metrics)
        contenders = {agent.name: agent}
        contenders.setdefault("buy_and_hold", BuyAndHold(train_env.actions))
        contenders.setdefault("random", RandomAgent(train_env.actions, cfg.seed))
        results = {name: backtester.run(a, data["test"], data["test_execution"])
                   for name, a in contenders.items()}
        main = results[agent.name]
        validation = backtester.run(agent, data["validation"], validation_execution).metrics
        mlflow.log_metrics({f"val/{k}": v for k, v in validation.items()})
        mlflow.log_metrics({f"test/{k}": v for k, v in main.metrics.items()})
        for name, result in results.items():
            if name != agent.name:
                mlflow.log_metrics({f"baseline/{name}/{k}": v for k, v in result.metrics.items()})
        main.trades.to_csv(output_dir / "trades.csv", index=False)
        main.equity.to_csv(output_dir / "equity.csv")
        artifacts = [output_dir / "config.yaml", output_dir / "trades.csv", output_dir / "equity.csv"]
        if cfg.backtest.plots:
            artifacts += save_plots({n: r.equity for n, r in results.items()},
                                    output_dir / "plots", agent.name)
        saved = agent.save(output_dir / "policy.pt")
        artifacts += [saved] if saved else []
        metrics = {name: r.metrics for name, r in results.items()}
        title = (f"Test split ({data['test'].index[cfg.env.window_size - 1]:%Y-%m-%d} .. "
                 f"{data['test'].index[-1]:%Y-%m-%d}), scenario={cfg.scenario.name}")
        report(metrics, title, output_dir / "summary.json")
        artifacts.append(output_dir / "summary.json")
        for path in artifacts:
            mlflow.log_artifact(str(path))
        mlflow.log_metric("run_seconds", time.perf_counter() - started)
    return {**metrics, "validation": validation}


USER_ERRORS = (DataValidationError, ExchangeConfigError, registry.UnknownComponentError,
               FileNotFoundError)


def _log_metrics(metrics: dict[str, float], step: int) -> None:
    mlflow.log_metrics(metrics, step=step)
    listeners.notify(metrics, step)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float]:
    """Returns the run's validation and test metrics as {"val/sharpe": ..., "test/sharpe": ...}.

    Bad input (data, config names, exchange settings) ends the run with its message, no traceback.
    """
    try:
        metrics = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    return {**{f"val/{k}": v for k, v in metrics["validation"].items()},
            **{f"test/{k}": v for k, v in metrics[cfg.agent.name].items()}}


if __name__ == "__main__":
    main()
