"""Runs and sweeps from the MLflow store that ``src.run`` writes (the one source of figures)."""

import io

import mlflow
import pandas as pd
from mlflow.entities import Run

from src.api.models import RunDetail, RunRow


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient()


def experiment_ids() -> list[str]:
    return [e.experiment_id for e in client().search_experiments()]


def _scenario(params: dict[str, str]) -> str:
    names = sorted({key.split(".")[1] for key in params if key.startswith("scenario.")})
    return "+".join(names) or "none"


def _metric(run: Run, *keys: str) -> float | None:
    return next((run.data.metrics[k] for k in keys if k in run.data.metrics), None)


def row(run: Run) -> RunRow:
    params = run.data.params
    return RunRow(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        status=run.info.status,
        experiment=run.info.experiment_id,
        agent=params.get("agent.name"),
        data=params.get("data.name"),
        scenario=_scenario(params),
        mode=params.get("mode"),
        test_sharpe=_metric(run, "test/sharpe"),
        val_sharpe=_metric(run, "val/sharpe"),
        total_return=_metric(run, "test/total_return"),
        max_drawdown=_metric(run, "test/max_drawdown"),
        trades=_metric(run, "test/trades"),
        seconds=_metric(run, "run_seconds"),
        parent_run_id=run.data.tags.get("mlflow.parentRunId"),
    )


def detail(run: Run) -> RunDetail:
    artifacts = [a.path for a in client().list_artifacts(run.info.run_id)]
    return RunDetail(
        **row(run).model_dump(),
        artifact_dir=run.info.artifact_uri.removeprefix("file://"),
        params=run.data.params,
        metrics=run.data.metrics,
        tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.log")},
        artifacts=artifacts,
    )


def search(filter_string: str = "", offset: int = 0, limit: int = 50) -> tuple[list[RunRow], int]:
    """Runs matching an MLflow filter, newest first; (page, total)."""
    runs = client().search_runs(
        experiment_ids(), filter_string, order_by=["attributes.start_time DESC"], max_results=5000
    )
    return [row(r) for r in runs[offset : offset + limit]], len(runs)


def get(run_id: str) -> Run | None:
    try:
        return client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None


def artifact_frame(run_id: str, name: str) -> pd.DataFrame | None:
    """A CSV artifact of a run as a frame (None if the run has none)."""
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name)
    except (mlflow.exceptions.MlflowException, OSError):
        return None
    with open(path, "rb") as handle:
        return pd.read_csv(io.BytesIO(handle.read()))


def children(parent_run_id: str) -> list[Run]:
    return client().search_runs(experiment_ids(), f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=5000)
