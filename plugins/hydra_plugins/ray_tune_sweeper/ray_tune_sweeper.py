"""``RayTuneSweeper``: a Hydra sweeper that runs each trial of a Ray Tune search as a Hydra job.

Each trial composes the job config from its sampled overrides plus the fixed ones and calls the
same task function as a single run (``hydra.core.utils.run_job``), under ``hydra.sweep.dir``,
with ``evaluate_test=false`` (trials see validation only) and ``resources.num_threads`` = the CPUs
it reserves. Trials report intermediate metrics through ``src.tracking.listeners`` (for ASHA) and
their final metrics from the task's return value. Results: ``optimization_results.yaml`` in the
sweep dir, a rich table of all trials, and an MLflow parent run whose children are the trials'
runs; the best trial's policy then gets the sweep's one test evaluation (a child run named
``<run_name>-test-of-best``, its figures logged on the parent as ``best_test/*`` with the tag
``best_trial_id``; a resumed, finished sweep reuses them rather than testing again).

Resume: a sweep stores a fingerprint of its search space, fixed overrides and search settings;
rerunning into the same ``hydra.sweep.dir`` resumes only when they match (``resume=false`` starts
a new sweep and a new parent run). An interrupted sweep ends its parent run KILLED, a crashed one
FAILED; trial runs left RUNNING by an interruption are marked KILLED.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, run_job, setup_globals
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.table import Table

from hydra_plugins.ray_tune_sweeper.config import RayTuneSweeperConf
from hydra_plugins.ray_tune_sweeper.search_space import parse

if TYPE_CHECKING:
    from ray import tune

log = logging.getLogger(__name__)


def tune_key(name: str) -> str:
    """Ray Tune splits nested result keys on '/': report 'val/sharpe' as 'val_sharpe'."""
    return name.replace("/", "_")


def _report_numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {tune_key(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


SHARPE_INPUTS = ("sharpe_per_period", "n_returns", "skewness", "kurtosis", "psr")  # val_* per trial


def _trial_resources(config: DictConfig, threads: int) -> Any:
    """What one trial reserves: ``threads`` CPUs, plus with ``resources=ray`` one bundle per
    collection worker it may use (``max_workers`` with autoscale, else ``num_workers``), each
    what a worker asks for (a CPU and its memory): its placement group holds them, so the trial's
    workers and their scaler stay inside it."""
    from ray import tune  # heavy: imported when a sweep runs, not at plugin discovery

    from src.agents.collection import worker_bundle

    if OmegaConf.select(config, "resources.name") != "ray":
        return {"cpu": threads}
    ray_settings = OmegaConf.select(config, "resources.ray")
    workers = ray_settings.max_workers if ray_settings.autoscale else ray_settings.num_workers
    bundles: list[dict[str, int | float]] = [{"CPU": threads}]
    bundles += [worker_bundle(ray_settings) for _ in range(int(workers))]
    return tune.PlacementGroupFactory(bundles)


def _override(key: str, value: Any) -> str:
    return f"{key}={value}"


def _trial(
    sampled: dict[str, Any],
    *,
    fixed: list[str],
    hydra_context: HydraContext,
    config: DictConfig,
    task_function: TaskFunction,
    singleton_state: Any,
    metric: str,
    parent_run_id: str | None,
    threads: int,
) -> None:
    """One Ray Tune trial: a Hydra job with the sampled overrides (runs in a Ray worker)."""
    from ray import tune  # heavy: imported when a sweep runs, not at plugin discovery

    from src.tracking import listeners  # the project's hook for intermediate metrics

    setup_globals()
    Singleton.set_state(singleton_state)
    trial = tune.get_context()
    overrides = fixed + [_override(k, v) for k, v in sampled.items()]
    overrides += ["++evaluate_test=false", f"resources.num_threads={threads}"]
    if OmegaConf.select(config, "agent.resume") is not None:
        overrides.append("agent.resume=true")  # a rerun trial continues from its training checkpoint
    if parent_run_id:
        overrides.append(f"++mlflow.parent_run_id={parent_run_id}")
    sweep_config = hydra_context.config_loader.load_sweep_config(config, overrides)
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = trial.get_trial_id()
        sweep_config.hydra.job.num = int(trial.get_trial_name().rsplit("_", 1)[-1])
        sweep_config.run_name = f"{sweep_config.run_name}-{trial.get_trial_id()}"

    def report(metrics: dict[str, float], step: int) -> None:
        numbers = _report_numbers(metrics)
        if metric in numbers:  # validation evaluations only: what ASHA compares
            tune.report({**numbers, "frames": step})

    listeners.add(report)
    try:
        result: JobReturn = run_job(
            hydra_context=hydra_context,
            task_function=task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        final = _report_numbers(result.return_value)  # re-raises the job's exception
    finally:
        listeners.remove(report)
    if not math.isfinite(final.get(metric, float("nan"))):
        raise ValueError(f"trial finished without a finite {metric!r}: {final}")
    tune.report({**final, "trial_completed": True, "output_dir": result.return_value.get("output_dir", "")})


def fingerprint(lines: list[str], conf: DictConfig) -> str:
    """Hash of what makes a sweep the same sweep: its override lines (search space and fixed
    values) and the search settings."""
    settings = {
        key: conf[key]
        for key in (
            "num_samples",
            "metric",
            "mode",
            "search_alg",
            "scheduler",
            "grace_period",
            "reduction_factor",
            "seed",
        )
    }
    record = json.dumps({"overrides": sorted(lines), **settings}, sort_keys=True, default=str)
    return hashlib.sha256(record.encode()).hexdigest()


class RayTuneSweeper(Sweeper):
    def __init__(self, **kwargs: Any) -> None:
        self.conf = OmegaConf.structured(RayTuneSweeperConf(**{k: v for k, v in kwargs.items()}))
        if self.conf.mode not in ("max", "min"):
            raise ValueError(f"hydra.sweeper.mode={self.conf.mode!r}; valid: max, min")
        if not self.conf.metric.startswith("val_"):
            raise ValueError(
                f"hydra.sweeper.metric={self.conf.metric!r}: a sweep selects on a "
                "validation metric only (the test split is evaluated once, for the "
                "best trial); valid: val_<metric>, e.g. val_sharpe, val_sortino"
            )
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    @property
    def setup_config(self) -> DictConfig:
        """The run's config given to ``setup`` (an error before it)."""
        if self.config is None:
            raise RuntimeError("RayTuneSweeper used before setup")
        return self.config

    def sweep(self, arguments: list[str]) -> Any:
        from ray import tune  # heavy: imported when a sweep runs, not at plugin discovery

        if self.config is None or self.hydra_context is None:
            raise RuntimeError("RayTuneSweeper.sweep called before setup")
        conf, config = self.conf, self.config
        given = OmegaConf.to_container(conf.params, resolve=True)
        if not isinstance(given, dict):
            raise ValueError(f"hydra.sweeper.params must map keys to sweeps; got {given!r}")
        params: dict[str, Any] = {str(k): v for k, v in given.items()}
        space, fixed = parse(arguments, params)
        if not space:
            raise ValueError(
                "hydra/sweeper=ray_tune needs at least one sweep override, e.g. "
                "agent.lr='tag(log, interval(1e-4, 1e-2))'"
            )
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = Path(conf.storage_path or sweep_dir / "ray_results").absolute()
        lines = [f"{k}={v}" for k, v in params.items()]
        resuming = self._prepare_storage(storage, fingerprint(lines + list(arguments), conf))
        self._start_ray(storage)
        parent = self._start_parent_run(sweep_dir, resuming)
        threads = int(conf.cpus_per_trial or OmegaConf.select(config, "resources.num_threads") or 1)
        trainable = tune.with_parameters(
            _trial,
            fixed=fixed,
            hydra_context=self.hydra_context,
            config=config,
            task_function=self.task_function,
            singleton_state=Singleton.get_state(),
            metric=conf.metric,
            parent_run_id=parent,
            threads=threads,
        )
        trainable = tune.with_resources(trainable, _trial_resources(config, threads))
        tuner = self._tuner(trainable, space, storage, config, resuming)
        status = "FAILED"
        try:
            grid, interrupted = _fit(tuner)
            if interrupted or len(grid) < _expected_trials(space, conf.num_samples):
                status = "KILLED"
                log.warning(
                    "Sweep interrupted (%d of %d trials started); rerun the same command to resume it",
                    len(grid),
                    _expected_trials(space, conf.num_samples),
                )
                return None
            results = self._summarise(grid, space, fixed, sweep_dir, parent)
            results["best_test"] = self._test_best(results, grid, parent)
            OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
            mlflow.log_artifact(str(sweep_dir / "optimization_results.yaml"))
            status = "FINISHED"
            return results
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            _close_orphan_trials(parent)
            mlflow.end_run(status)

    def _prepare_storage(self, storage: Path, print_: str) -> bool:
        """True to resume the sweep stored at ``storage``: it exists, ``resume`` is on and its
        fingerprint matches (a mismatch is refused). Otherwise a stored sweep is moved aside."""
        from ray import tune  # heavy: imported when a sweep runs, not at plugin discovery

        stored_dir, record = storage / "sweep", storage / "sweep_fingerprint"
        if not tune.Tuner.can_restore(str(stored_dir)):
            storage.mkdir(parents=True, exist_ok=True)
            record.write_text(print_)
            return False
        if self.conf.resume:
            stored = record.read_text().strip() if record.is_file() else None
            if stored != print_:
                raise ValueError(
                    f"hydra.sweeper.resume=true, but the sweep stored at {stored_dir} was started "
                    "with another search space, fixed overrides, num_samples, metric or search "
                    "settings; rerun with hydra.sweeper.resume=false to start a new sweep there "
                    "(the old one is kept beside it), or pick another hydra.sweep.dir"
                )
            return True
        aside = storage / f"sweep-replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(stored_dir), str(aside))
        log.info("hydra.sweeper.resume=false: the stored sweep moved to %s", aside)
        record.write_text(print_)
        return False

    def _start_ray(self, storage: Path) -> None:
        import ray

        if ray.is_initialized():
            return
        env = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "PYTHONUNBUFFERED": "1"}
        os.environ.update(env)
        if self.conf.ray_address:
            ray.init(address=self.conf.ray_address, runtime_env={"env_vars": env})
        else:
            ray.init(
                num_cpus=self.conf.num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": env},
                _node_ip_address="127.0.0.1",
            )

    def _tuner(
        self, trainable: Any, space: dict[str, Any], storage: Path, config: DictConfig, resuming: bool
    ) -> tune.Tuner:
        from ray import tune  # heavy: imported when a sweep runs, not at plugin discovery

        conf = self.conf
        name = "sweep"
        if resuming:
            log.info(f"Resuming the sweep stored at {storage / name}")
            return tune.Tuner.restore(
                str(storage / name), trainable, resume_unfinished=True, resume_errored=False, param_space=space
            )
        seed = conf.seed if conf.seed is not None else config.get("seed")
        tune_config = tune.TuneConfig(
            metric=conf.metric,
            mode=conf.mode,
            num_samples=conf.num_samples,
            search_alg=self._search_alg(seed),
            scheduler=self._scheduler(),
            max_concurrent_trials=conf.max_concurrent_trials,
        )
        run_config = tune.RunConfig(
            name=name,
            storage_path=str(storage),
            verbose=1,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        )
        return tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config)

    def _search_alg(self, seed: int | None) -> Any:
        if self.conf.search_alg == "random":
            from ray.tune.search.basic_variant import BasicVariantGenerator

            return BasicVariantGenerator(random_state=seed)
        if self.conf.search_alg == "optuna":
            import optuna
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))
        raise ValueError(f"hydra.sweeper.search_alg={self.conf.search_alg!r}; valid: random, optuna")

    def _scheduler(self) -> Any:
        from ray import tune  # heavy: imported when a sweep runs, not at plugin discovery

        if self.conf.scheduler == "fifo":
            return tune.schedulers.FIFOScheduler()
        if self.conf.scheduler == "asha":
            return tune.schedulers.ASHAScheduler(
                time_attr="training_iteration",
                grace_period=self.conf.grace_period,
                reduction_factor=self.conf.reduction_factor,
            )
        raise ValueError(f"hydra.sweeper.scheduler={self.conf.scheduler!r}; valid: fifo, asha")

    def _start_parent_run(self, sweep_dir: Path, resuming: bool) -> str:
        """The sweep's MLflow parent run; trials nest under it (tag mlflow.parentRunId). A
        resumed sweep reopens the parent run of its first start, after marking the trial runs
        its interruption left RUNNING as KILLED."""
        from src.tracking.mlflow_run import experiment_id, use_tracking_uri

        use_tracking_uri(self.setup_config.mlflow.tracking_uri)
        record = sweep_dir / "mlflow_parent_run_id"
        if resuming and record.is_file():
            parent = record.read_text().strip()
            _close_orphan_trials(parent)
            return mlflow.start_run(run_id=parent).info.run_id
        run = mlflow.start_run(
            experiment_id=experiment_id(self.setup_config.mlflow.experiment), run_name=f"sweep-{sweep_dir.name}"
        )
        record.write_text(run.info.run_id)
        mlflow.log_params(
            {
                "sweep.dir": str(sweep_dir),
                "sweep.metric": self.conf.metric,
                "sweep.mode": self.conf.mode,
                "sweep.search_alg": self.conf.search_alg,
                "sweep.scheduler": self.conf.scheduler,
                "sweep.num_samples": self.conf.num_samples,
            }
        )
        return run.info.run_id

    def _summarise(
        self, grid: Any, space: dict[str, Any], fixed: list[str], sweep_dir: Path, parent_run_id: str
    ) -> dict[str, Any]:
        conf = self.conf
        rows = []
        for result in grid:
            metrics = result.metrics or {}
            config = result.config or metrics.get("config") or {}
            params = {k: config.get(k, "?") for k in space}
            error = _last_line(str(result.error)) if result.error else ""
            stopped = not error and not metrics.get("trial_completed", False)
            rows.append(
                {
                    "params": params,
                    "value": metrics.get(conf.metric),
                    "error": error,
                    "stopped": stopped,
                    "trial_id": metrics.get("trial_id"),
                    "sharpe": {k: metrics.get(f"val_{k}") for k in SHARPE_INPUTS},
                }
            )
        _mark_stopped_runs(parent_run_id, [str(r["trial_id"]) for r in rows if r["stopped"]])

        def ranked(subset):
            return sorted(subset, key=lambda r: r["value"], reverse=conf.mode == "max")

        # only trials that ran to the end compete: a stopped trial's value is an intermediate one
        finished = ranked(r for r in rows if r["value"] is not None and not r["error"] and not r["stopped"])
        stopped = ranked(r for r in rows if r["value"] is not None and r["stopped"])
        failed = [r for r in rows if r["error"] or r["value"] is None]
        Console().print(_table(finished + stopped + failed, list(space), conf.metric))
        if not finished:
            raise RuntimeError(f"no trial completed; see {sweep_dir}/ray_results")
        best = finished[0]
        results = {
            "name": "ray_tune",
            "metric": conf.metric,
            "mode": conf.mode,
            "best_evaluated_params": best["params"],
            "best_value": best["value"],
            "best_overrides": fixed + [_override(k, v) for k, v in best["params"].items()],
            "best_trial_id": best["trial_id"],
            "trials": len(rows),
            "failed_trials": len(failed),
        }
        mlflow.log_metrics({f"best_{conf.metric}": best["value"], "trials": len(rows), "failed_trials": len(failed)})
        if all(r["sharpe"]["sharpe_per_period"] is not None for r in finished):
            from src.backtest.metrics import deflated_sharpe

            inputs = best["sharpe"]
            dsr = deflated_sharpe(
                inputs["sharpe_per_period"],
                int(inputs["n_returns"]),
                inputs["skewness"],
                inputs["kurtosis"],
                [r["sharpe"]["sharpe_per_period"] for r in finished],
            )
            results["best_validation_psr"] = inputs["psr"]
            results["deflated_sharpe"] = dsr  # the best trial's validation Sharpe, deflated for N trials
            mlflow.log_metrics({"best_val_psr": inputs["psr"], **{f"best_val_dsr/{k}": v for k, v in dsr.items()}})
            log.info(
                "Best trial's validation PSR %.2f, deflated Sharpe ratio %.2f over %d trials",
                inputs["psr"],
                dsr["dsr"],
                len(finished),
            )
        return results

    def _test_best(self, results: dict[str, Any], grid: Any, parent_run_id: str) -> dict[str, float]:
        """The sweep's one test evaluation: the best trial's policy (its checkpoint, else its
        overrides) backtested on the test split, as a child run; its figures go on the parent."""
        if self.hydra_context is None or self.task_function is None:
            raise RuntimeError("RayTuneSweeper._test_best called before setup")
        parent = mlflow.MlflowClient().get_run(parent_run_id).data
        if parent.tags.get("best_trial_id") == str(results["best_trial_id"]):  # tested already
            return {k.removeprefix("best_"): v for k, v in parent.metrics.items() if k.startswith("best_test/")}
        best_dir = next(
            (
                r.metrics.get("output_dir")
                for r in grid
                if (r.metrics or {}).get("trial_id") == results["best_trial_id"]
            ),
            None,
        )
        overrides = list(results["best_overrides"]) + ["++evaluate_test=true"]
        checkpoint = Path(best_dir or "") / "policy.pt"
        if best_dir and checkpoint.is_file():
            overrides.append(f"agent.checkpoint={checkpoint}")
        config = self.hydra_context.config_loader.load_sweep_config(self.setup_config, overrides)
        with open_dict(config):
            config.hydra.job.id = "test_of_best"
            config.hydra.job.num = results["trials"]
            config.run_name = f"{config.run_name}-test-of-best"
            config.mlflow.parent_run_id = parent_run_id
        result = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        test = {k: float(v) for k, v in result.return_value.items() if k.startswith("test/")}
        mlflow.log_metrics({f"best_{k}": v for k, v in test.items()})
        mlflow.set_tag("best_trial_id", str(results["best_trial_id"]))
        Console().print(
            f"Best trial on the test split (evaluated once): Sharpe "
            f"{test.get('test/sharpe', float('nan')):+.3f}, total return "
            f"{test.get('test/total_return', float('nan')):+.2%}"
        )
        return test


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _last_line(text: str) -> str:
    """The exception line of a traceback (its last non-empty line), shortened."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:100] if lines else text[:100]


def _fit(tuner: tune.Tuner) -> tuple[Any, bool]:
    """(result grid, whether Ctrl-C interrupted the run). Ray Tune catches the first SIGINT, saves
    its state and returns normally; its handler then puts back the one it found, which is how an
    interruption shows (a finished run leaves Ray's handler installed; it is removed here)."""
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT)
    grid = tuner.fit()
    if not main_thread or int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0")):
        return grid, False  # Ray installed no handler
    interrupted = signal.getsignal(signal.SIGINT) is before
    signal.signal(signal.SIGINT, before)
    return grid, interrupted


def _expected_trials(space: dict[str, Any], num_samples: int) -> int:
    """Trials a finished sweep has: num_samples x the size of every grid axis."""
    return num_samples * math.prod(
        len(v["grid_search"]) for v in space.values() if isinstance(v, dict) and "grid_search" in v
    )


def _close_orphan_trials(parent_run_id: str) -> None:
    """Trial runs an interruption left RUNNING under ``parent_run_id`` are marked KILLED."""
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    for child in client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"
    ):
        client.set_tag(child.info.run_id, "stopped_by", "interruption")
        client.set_terminated(child.info.run_id, "KILLED")


def _mark_stopped_runs(parent_run_id: str, trial_ids: list[str]) -> None:
    """Trials the scheduler stopped early were interrupted mid-run: mark their MLflow runs KILLED."""
    if not trial_ids:
        return
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    for child in children:
        if any(child.info.run_name.endswith(trial_id) for trial_id in trial_ids):
            client.set_tag(child.info.run_id, "stopped_by", "scheduler")
            client.set_terminated(child.info.run_id, "KILLED")


def _table(rows: list[dict[str, Any]], keys: list[str], metric: str) -> Table:
    table = Table(title=f"Ray Tune trials, best first by {metric}")
    for key in keys + [metric, "status"]:
        table.add_column(key, justify="right")
    for row in rows:
        value = "-" if row["value"] is None else f"{row['value']:+.4f}"
        status = f"FAILED: {row['error']}" if row["error"] else "stopped early" if row["stopped"] else "completed"
        table.add_row(*(_short(row["params"][k]) for k in keys), value, status)
    return table
