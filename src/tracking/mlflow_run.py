"""MLflow helpers: where runs go, the flattened config as params (secrets removed)."""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
from mlflow.entities import RunStatus
from omegaconf import DictConfig, OmegaConf

DEFAULT_TRACKING_URI = "sqlite:///mlflow_runs/mlflow.db"
SYSTEM_METRICS_SECONDS = 2  # MLflow's CPU/memory/GPU sampling interval (system/* metrics)
SECRET_MARKERS = ("key", "secret", "password", "token", "credential")


def tracking_uri(configured: str | None = None) -> str:
    """``mlflow.tracking_uri`` from the config, else $MLFLOW_TRACKING_URI, else the local sqlite."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def flatten_params(cfg: DictConfig) -> dict[str, str]:
    """Resolved config as ``{"agent.lr": "0.0003", ...}``, without any secret-looking field."""
    flat: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            name = prefix[:-1]
            if not any(marker in name.lower() for marker in SECRET_MARKERS):
                flat[name] = str(node)[:500]

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def experiment_id(name: str) -> str:
    """The MLflow experiment ``name``, created (artifacts beside a sqlite store) if missing."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):  # artifacts beside the database: mlflow_runs/artifacts
        location = "file://" + os.path.join(os.path.dirname(_sqlite_path(uri)), "artifacts")
    return mlflow.create_experiment(name, artifact_location=location)


def _sqlite_path(uri: str) -> str:
    return os.path.abspath(uri.removeprefix("sqlite:///"))


def use_tracking_uri(configured: str | None = None) -> str:
    """Point MLflow at ``tracking_uri(configured)``, creating a sqlite store's folder."""
    uri = tracking_uri(configured)
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(_sqlite_path(uri)), exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


@contextmanager
def mlflow_run(cfg: DictConfig, run_name: str, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Open the run for this job; a failing job is recorded as FAILED, an interrupted one
    (Ctrl-C, SIGTERM) as KILLED, never left half-open. MLflow samples CPU, memory and (where
    one exists) GPU use into ``system/*`` metrics while the run is open.

    With ``mlflow.parent_run_id`` set (a sweep), the run is nested under that run (which may be
    the active run of this process: a sweep's test of its best trial). ``run_id`` reopens that
    run (a resumed paper session) instead of starting one."""
    use_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_SECONDS)
    mlflow.set_system_metrics_samples_before_logging(1)
    if run_id:
        opened = mlflow.start_run(run_id=run_id, log_system_metrics=True)
    else:
        parent = cfg.mlflow.get("parent_run_id")
        opened = mlflow.start_run(
            experiment_id=experiment_id(cfg.mlflow.experiment),
            run_name=run_name,
            tags={"mlflow.parentRunId": parent} if parent else None,
            nested=mlflow.active_run() is not None,
            log_system_metrics=True,
        )
    with opened as run:
        if not run_id:
            mlflow.log_params(flatten_params(cfg))
        try:
            yield run
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the run was stopped, not broken
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            raise
