"""One run: data -> features -> split -> scenario -> train -> backtest -> MLflow.

``python -m src.run [group=option ...] [key=value ...]``; see conf/config.yaml.
"""

import json
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
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
from src.agents.calibrate import calibrated
from src.agents.checkpoint import policy_contract
from src.agents.resume import TrainingCheckpoints, TrainingInterrupted, checkpoint_dir
from src.backtest.grid import grid_search
from src.backtest.metrics import psr_against
from src.backtest.multi_agent import RandomLearners, backtest_market, print_market
from src.backtest.plots import html_report, save_plots
from src.backtest.sizing import with_risk_columns
from src.config_checks import ConfigError, check_ranges
from src.data.ccxt_source import ExchangeConfigError
from src.data.timeframes import periods_per_year
from src.data.validate import DataValidationError
from src.envs.torchrl_env import feature_columns
from src.live import session
from src.scenarios import apply_scenarios, check_params, scenario_names
from src.seeds import run_seeds, with_sweep_overrides
from src.settings import load_environment
from src.splits import SplitBounds, split_bounds, with_history
from src.summary import report, stress_report
from src.tracking import listeners
from src.tracking.mlflow_run import mlflow_run
from src.walk_forward import run_walk_forward

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "conf" / "scenario"
MODES = ("single", "stress", "paper", "replay_journal", "grid", "walk_forward")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Market:
    """The run's bars: raw history, split bounds, featurised train/validation, and test frames
    under any scenario (features recomputed on the stressed history; they only look back)."""

    def __init__(self, cfg: DictConfig, raw: pd.DataFrame | None = None, bounds: SplitBounds | None = None):
        """``raw`` and ``bounds`` (a walk-forward fold) replace the data group's bars and split."""
        self.cfg = cfg
        self.raw = registry.build("data", cfg.data) if raw is None else raw
        self.bounds = bounds or split_bounds(len(self.raw), cfg.split.train, cfg.split.validation)
        self.featurize = registry.build("features", cfg.features)
        self.clean = self._features(self.raw)
        self.scaler = self.featurize.scaler  # fitted on the clean train rows
        self.shift = self.featurize.warmup_rows  # feature rows start after the warm-up
        self.history = cfg.env.window_size - 1
        self.val_start = self.bounds.validation - self.shift
        self.test_start = self.bounds.test - self.shift
        if self.val_start <= cfg.env.window_size + cfg.env.episode_length:
            raise ValueError(
                f"train split has {self.val_start} bars after feature warm-up: too few "
                "for window_size + episode_length; use more data (data.n_bars)"
            )

    def _features(self, raw: pd.DataFrame) -> pd.DataFrame:
        return with_risk_columns(self.featurize(raw, fit_rows=self.bounds.validation), self.cfg.backtest)

    def train(self, scenario: DictConfig | None = None) -> pd.DataFrame:
        """Train bars; under ``scenario`` when training is domain-randomised."""
        if scenario is None:
            return self.clean.iloc[: self.val_start]
        stressed, _ = apply_scenarios(self.raw.iloc[: self.bounds.validation], 0, scenario)
        return self._features(stressed).iloc[: self.val_start]

    def validation(self) -> pd.DataFrame:
        return with_history(self.clean, self.val_start, self.test_start, self.history)

    def test(self, scenario: DictConfig) -> tuple[pd.DataFrame, list]:
        """Test bars (with ``window_size - 1`` bars of history) under ``scenario``, and the marks
        of what it injected."""
        stressed_raw, marks = apply_scenarios(self.raw, self.bounds.test, scenario)
        stressed = self.clean if stressed_raw is self.raw else self._features(stressed_raw)
        return with_history(stressed, self.test_start, self.bounds.end - self.shift, self.history), marks

    def quality(self) -> dict:
        found = self.raw.attrs.get("data_quality") or {}
        return {
            "data_quality.bars": len(self.raw),
            "features.warmup_rows": self.shift,
            **{f"data_quality.{k}": v for k, v in found.items()},
        }


def stress_scenarios(cfg: DictConfig) -> dict[str, DictConfig]:
    """{name: scenario config} for stress mode, ``none`` (the baseline) always first: the run's
    own settings for a scenario it selects, else the defaults in conf/scenario/<name>.yaml."""
    out = {}
    for name in dict.fromkeys(["none", *(cfg.stress.scenarios or registry.names("scenario"))]):
        if name in cfg.scenario:
            params = cfg.scenario[name]
        else:
            path = SCENARIO_DIR / f"{name}.yaml"
            if not path.is_file():
                registry.lookup("scenario", name)  # an unknown name lists the valid ones
                raise FileNotFoundError(f"{path}: no defaults for scenario {name!r}")
            params = OmegaConf.create({"seed": cfg.seed, "s": OmegaConf.load(path)}).s
        out[name] = OmegaConf.create({name: OmegaConf.to_container(params, resolve=True)})
    return out


def check_config(cfg: DictConfig) -> None:
    """Fail before any work on a setting out of range or a combination that would mislead."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode!r}; valid: {', '.join(MODES)}")
    if cfg.paper.on_stale not in ("flatten", "hold"):
        raise ConfigError(f"paper.on_stale={cfg.paper.on_stale!r}; valid: flatten, hold")
    check_ranges(cfg)
    check_params(cfg.scenario)
    multi = cfg.env.name == "multi_agent"
    if multi != (cfg.agent.name in ("mappo", "ippo")):
        raise ConfigError(
            f"env={cfg.env.name} with agent={cfg.agent.name}: the multi-agent market "
            "trains agent=mappo or agent=ippo, and those need env=multi_agent"
        )
    if multi and cfg.mode not in ("single", "stress"):
        raise ConfigError(f"mode={cfg.mode} with env=multi_agent; valid: single, stress")
    if cfg.mode == "stress":
        for scenario in stress_scenarios(cfg).values():
            check_params(scenario)
    if (
        cfg.stress.train_under_scenario
        and cfg.features.normalize.method == "train_zscore"
        and list(cfg.scenario) != ["none"]
    ):
        raise ConfigError(
            "stress.train_under_scenario=true with features.normalize.method=train_zscore would fit "
            "the scaler on stressed train bars and apply it to unstressed validation and test bars; "
            "valid: features.normalize.method=rolling_zscore or none, or train_under_scenario=false"
        )


def run(cfg: DictConfig, output_dir: Path, market: "Market | None" = None) -> dict[str, dict[str, float]]:
    """Run one job described by ``cfg``; returns {"validation": validation metrics of the run's
    agent (what sweeps select on)} plus, with ``evaluate_test``, {agent name: test metrics}.
    ``market``: the bars to use instead of the data group's (a walk-forward fold)."""
    started = time.perf_counter()
    registry.validate(cfg)
    check_config(cfg)
    compute = registry.build("resources", cfg.resources)
    training = TrainingCheckpoints(checkpoint_dir(cfg)) if "training_checkpoints" in cfg.agent else None
    seed_everything(cfg.seed)
    market = market or Market(cfg)
    probe = None
    if cfg.resources.get("calibrate") and not cfg.agent.get("checkpoint"):
        cfg, probe = calibrated(cfg, market.train(), compute)
    risk = cfg.backtest if cfg.backtest.apply_in_training else None
    train_scenario = cfg.scenario if cfg.stress.train_under_scenario else None
    train_df = market.train(train_scenario)
    train_env = registry.build("env", cfg.env, train_df, seed=cfg.seed, risk=risk)
    contract = policy_contract(cfg, feature_columns(train_df), market.scaler)
    agent = registry.build("agent", cfg.agent, train_env, seed=cfg.seed)
    backtester = registry.build("backtest", cfg.backtest, cfg.env, train_env.actions)
    validation_df = market.validation()
    multi = cfg.env.name == "multi_agent"
    if multi:

        def evaluate(a):
            return backtest_market(cfg, validation_df, a).learners_mean
    else:

        def evaluate(a):
            return backtester.run(a, validation_df).metrics

    stored = session.stored_meta(cfg) if cfg.mode == "paper" else {}
    checkpoint = cfg.agent.get("checkpoint") or stored.get("checkpoint")
    resumed = training.load() if training is not None and cfg.agent.resume else None
    run_id = stored.get("mlflow_run_id") or (resumed or {}).get("mlflow_run_id")
    with mlflow_run(cfg, run_name=cfg.run_name, run_id=run_id) as active:
        mlflow.log_params(market.quality())
        mlflow.set_tag("resources", compute.label)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if probe is not None:
            mlflow.log_table(probe, "calibration.json")
        if cfg.mode == "grid":
            return grid_search(cfg, market, backtester, train_env, output_dir)
        if checkpoint:
            agent.load(Path(checkpoint), contract)
        else:
            if cfg.agent.get("warm_start"):  # walk-forward: continue from the previous fold's policy
                agent.load(Path(cfg.agent.warm_start), contract, check=False)
            if training is not None:
                training.meta["mlflow_run_id"] = active.info.run_id
            agent.fit(train_env, _log_metrics, evaluate, compute=compute, checkpoints=training)
            if getattr(agent, "scaling_log", None):
                mlflow.log_text("".join(f"{line}\n" for line in agent.scaling_log), "ray_scaling.txt")
        if cfg.mode == "paper":
            return _paper(cfg, market, train_env, agent, contract, checkpoint, output_dir)
        if multi:
            return _multi_agent(cfg, market, agent, evaluate(agent), contract, output_dir)
        contenders = {agent.name: agent}
        contenders.setdefault("buy_and_hold", BuyAndHold(train_env.actions))
        contenders.setdefault("random", RandomAgent(train_env.actions, cfg.seed))
        validation = backtester.run(agent, validation_df).metrics
        # at the last training step, so MLflow's latest val/* is the selected policy's
        mlflow.log_metrics({f"val/{k}": v for k, v in validation.items()}, step=agent.frames_trained)
        artifacts = [output_dir / "config.yaml"]
        metrics = {}
        if not cfg.evaluate_test:  # a sweep trial: selection sees validation only
            mlflow.set_tag("test_evaluated", "false")
        elif cfg.mode == "stress":
            metrics = _stress(cfg, market, backtester, agent, contenders, output_dir, artifacts)
        else:
            metrics = _backtest(cfg, market, backtester, agent, contenders, output_dir, artifacts)
        saved = agent.save(output_dir / "policy.pt", contract)
        for path in artifacts + ([saved] if saved else []):
            folder = path.parent.relative_to(output_dir).as_posix()  # the output dir's layout
            mlflow.log_artifact(str(path), artifact_path=None if folder == "." else folder)
        mlflow.log_metric("run_seconds", time.perf_counter() - started)
    return {**metrics, "validation": validation}


def _paper(cfg, market, train_env, agent, contract, checkpoint, output_dir) -> dict:
    """``mode=paper``: a paper-trading session of the (trained or loaded) agent."""
    if not cfg.paper.session:  # named once: the MLflow param and the journal agree
        cfg = cfg.copy()
        cfg.paper.session = session.session_name(cfg)
    saved = agent.save(output_dir / "policy.pt", contract)
    policy = Path(checkpoint) if checkpoint else saved
    mlflow.log_params(
        {"paper.checkpoint": str(policy), "paper.feed": cfg.feed.name, "paper.session": cfg.paper.session}
    )

    def fresh_agent():
        built = registry.build("agent", cfg.agent, train_env, seed=cfg.seed)
        if policy is not None:
            built.load(policy, contract)
        return built, train_env.actions

    result = session.paper_trade(
        cfg, market.raw, market.bounds.test, fresh_agent, market.featurize, contract, policy, output_dir
    )
    return {"validation": {}, "paper": result}


def _multi_agent(cfg, market, agent, validation, contract, output_dir) -> dict:
    """``env=multi_agent``: every agent on one test market (each stress scenario in stress mode):
    a row per agent, the market's figures, and random learners in the same market for reference."""
    mlflow.log_metrics({f"val/{k}": v for k, v in validation.items()}, step=agent.frames_trained)
    if not cfg.evaluate_test:
        mlflow.set_tag("test_evaluated", "false")
        return {"validation": validation}
    scenarios = stress_scenarios(cfg) if cfg.mode == "stress" else {scenario_names(cfg.scenario): cfg.scenario}
    table, artifacts = {}, [output_dir / "config.yaml", agent.save(output_dir / "policy.pt", contract)]
    for name, scenario in scenarios.items():
        test_df, _ = market.test(scenario)
        result = backtest_market(cfg, test_df, agent)
        reference = backtest_market(cfg, test_df, RandomLearners(agent.actions, cfg.seed))
        print_market(result, f"{cfg.agent.name} on the test split, scenario={name}")
        prefix = "test" if len(scenarios) == 1 else f"stress/{name}"
        mlflow.log_metrics({f"{prefix}/{k}": v for k, v in result.learners_mean.items()})
        mlflow.log_metrics({f"{prefix}/agent/{a}/{k}": v for a, m in result.agents.items() for k, v in m.items()})
        mlflow.log_metrics({f"{prefix}/market/{k}": v for k, v in result.market.items()})
        mlflow.log_metrics({f"{prefix}/random_learners/{k}": v for k, v in reference.learners_mean.items()})
        table[name] = {**result.agents, "market": result.market, "random_learners": reference.learners_mean}
        folder = output_dir if len(scenarios) == 1 else output_dir / "stress" / name
        folder.mkdir(parents=True, exist_ok=True)
        pd.concat([result.equity, result.prices], axis=1).to_csv(folder / "equity.csv")
        result.trades.to_csv(folder / "trades.csv", index=False)
        artifacts += [folder / "equity.csv", folder / "trades.csv"]
    summary = output_dir / "summary.json"
    summary.write_text(json.dumps(table[name] if len(scenarios) == 1 else table, indent=2))
    for path in artifacts + [summary]:
        folder = path.parent.relative_to(output_dir).as_posix()
        mlflow.log_artifact(str(path), artifact_path=None if folder == "." else folder)
    return {"validation": validation, cfg.agent.name: result.learners_mean}


def _backtest(cfg, market, backtester, agent, contenders, output_dir, artifacts) -> dict:
    """Every contender on the test split under ``cfg.scenario``: table, files, MLflow."""
    test_df, marks = market.test(cfg.scenario)
    results = {name: backtester.run(a, test_df) for name, a in contenders.items()}
    hold = results.get("buy_and_hold")
    for name, result in results.items():
        if hold is not None and name != "buy_and_hold":
            result.metrics["psr_vs_buy_and_hold"] = psr_against(result.metrics, hold.metrics)
    main = results[agent.name]
    mlflow.log_metrics({f"test/{k}": v for k, v in main.metrics.items()})
    for name, result in results.items():
        if name != agent.name:
            mlflow.log_metrics({f"baseline/{name}/{k}": v for k, v in result.metrics.items()})
    main.trades.to_csv(output_dir / "trades.csv", index=False)
    main.trades.to_parquet(output_dir / "trades.parquet", index=False)  # typed; CSV for spreadsheets
    baseline = [r.equity.rename(name) for name, r in results.items() if name != agent.name]
    position = pd.Series(main.positions, index=main.equity.index, name="position")
    curves = pd.concat([main.equity, main.financing, position, *baseline], axis=1)
    curves.to_csv(output_dir / "equity.csv")
    curves.to_parquet(output_dir / "equity.parquet")
    metrics = {name: r.metrics for name, r in results.items()}
    title = (
        f"Test split ({test_df.index[cfg.env.window_size - 1]:%Y-%m-%d} .. "
        f"{test_df.index[-1]:%Y-%m-%d}), scenario={scenario_names(cfg.scenario)}"
    )
    artifacts += [output_dir / name for name in ("trades.csv", "trades.parquet", "equity.csv", "equity.parquet")]
    if cfg.backtest.plots:
        images = save_plots(
            {n: r.equity for n, r in results.items()},
            main.positions,
            output_dir / "plots",
            agent.name,
            periods_per_year(main.equity.index),
            marks,
        )
        artifacts += images + [html_report(title, metrics, images, main.trades, output_dir / "report.html")]
    report(metrics, title, output_dir / "summary.json", marks)
    artifacts.append(output_dir / "summary.json")
    return metrics


def _stress(cfg, market, backtester, agent, contenders, output_dir, artifacts) -> dict:
    """The agent and buy-and-hold under every stress scenario, against ``none``."""
    table = {}
    for name, scenario in stress_scenarios(cfg).items():
        test_df, marks = market.test(scenario)
        results = {n: backtester.run(a, test_df) for n, a in contenders.items() if n != "random"}
        table[name] = {n: r.metrics for n, r in results.items()}
        for n, r in results.items():
            mlflow.log_metrics({f"stress/{name}/{n}/{k}": v for k, v in r.metrics.items()})
        if cfg.backtest.plots:
            artifacts += save_plots(
                {n: r.equity for n, r in results.items()},
                results[agent.name].positions,
                output_dir / "plots" / name,
                agent.name,
                periods_per_year(test_df.index),
                marks,
            )[:1]
    stress_report(table, agent.name, output_dir / "stress.json")
    artifacts.append(output_dir / "stress.json")
    return table["none"]


@contextmanager
def sigterm_interrupts():
    """SIGTERM (a scheduler or ``kill`` stopping the run) is handled like Ctrl-C: a checkpoint is
    written and the MLflow run is marked KILLED."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (e.g. a Ray worker's job)
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def job(cfg: DictConfig, output_dir: Path) -> dict:
    """One seed's work in any mode: a walk-forward evaluation, or one run."""
    if cfg.mode == "walk_forward":
        return run_walk_forward(cfg, output_dir, run, Market)
    return run(cfg, output_dir)


USER_ERRORS = (DataValidationError, ExchangeConfigError, registry.UnknownComponentError, FileNotFoundError, ConfigError)


def _log_metrics(metrics: dict[str, float], step: int) -> None:
    mlflow.log_metrics(metrics, step=step)
    listeners.notify(metrics, step)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float]:
    """Returns the run's validation metrics as {"val/sharpe": ...}, and its test metrics as
    {"test/sharpe": ...} when ``evaluate_test``; ``output_dir`` says where its files (policy.pt)
    are.

    Bad input (data, config names, ranges, exchange settings) ends the run with its message, no
    traceback.
    """
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with sigterm_interrupts():
            if cfg.mode == "replay_journal":
                return {"parity_identical": float(session.replay_journal(cfg).identical)}
            cfg = with_sweep_overrides(cfg)
            if cfg.seeds > 1:
                metrics = run_seeds(cfg, output_dir, job)
            else:
                metrics = job(cfg, output_dir)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except TrainingInterrupted as stop:
        where = (
            f"checkpoint {stop.checkpoint}; rerun the same command with agent.resume=true"
            if stop.checkpoint
            else "no iteration finished, nothing to resume"
        )
        print(f"interrupted: training stopped, {where}", file=sys.stderr)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    return {
        **{f"val/{k}": v for k, v in metrics["validation"].items()},
        **{f"test/{k}": v for k, v in metrics.get(cfg.agent.name, {}).items()},
        "output_dir": str(output_dir.absolute()),
    }


if __name__ == "__main__":
    load_environment()  # ENV profile files, before Hydra composes
    main()
