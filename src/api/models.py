"""Pydantic models of every request and response of the API."""

from typing import Any, Literal

from pydantic import BaseModel, Field

JobStatus = Literal["queued", "running", "finished", "failed", "cancelled"]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    tracking_uri: str
    jobs_running: int


class RunRow(BaseModel):
    """One MLflow run as the runs table shows it (metrics are None where not logged)."""

    run_id: str
    name: str
    experiment: str
    status: str
    agent: str | None = None
    data: str | None = None
    scenario: str | None = None
    mode: str | None = None
    test_sharpe: float | None = None
    val_sharpe: float | None = None
    total_return: float | None = None
    max_drawdown: float | None = None
    trades: float | None = None
    seconds: float | None = None
    parent_run_id: str | None = None


class RunPage(BaseModel):
    runs: list[RunRow]
    total: int
    offset: int
    limit: int


class RunDetail(RunRow):
    artifact_dir: str = Field(description="where the run's artifacts are (policy.pt, ...)")
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifacts: list[str]


class Point(BaseModel):
    timestamp: str
    value: float
    baseline: float | None = Field(default=None, description="buy-and-hold on the same bars, if logged")


class Trade(BaseModel):
    timestamp: str
    side: str
    units: float
    price: float
    fee: float
    reason: str
    partial: bool


class Sweep(BaseModel):
    parent: RunRow
    metric: str | None
    trials: list[RunDetail]


class ConfigGroups(BaseModel):
    groups: dict[str, list[str]] = Field(description="group -> options, from Hydra's config repository")


class JobRequest(BaseModel):
    """A job of ``python -m src.run``: group choices and further overrides."""

    kind: Literal["run", "stress", "backtest", "paper"] = "run"
    groups: dict[str, str] = Field(default_factory=dict, examples=[{"agent": "buy_and_hold"}])
    overrides: list[str] = Field(default_factory=list, examples=[["data.n_bars=3000"]])


class Job(BaseModel):
    id: str
    kind: str
    overrides: list[str]
    status: JobStatus
    created: float
    started: float | None = None
    ended: float | None = None
    returncode: int | None = None
    output_dir: str
    progress: str = ""
    log_tail: list[str] = Field(default_factory=list)


class PaperSession(BaseModel):
    session: str
    bars: int
    fills: int
    equity: float | None
    last_bar: str | None


class ActRequest(BaseModel):
    checkpoint: str = Field(description="path of a policy.pt inside the project")
    market: list[list[float]] = Field(description="(window_size, n_features) observation window")
    account: list[float] = Field(default=[0.0, 0.0], description="(position fraction, log equity)")


class ActResponse(BaseModel):
    action: Any
    target: float
    latency_ms: float


class Problem(BaseModel):
    detail: Any
