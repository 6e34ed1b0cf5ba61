"""The FastAPI app: runs, sweeps, configs, jobs, paper sessions, one-step actions, metrics.

Mutating endpoints (POST, DELETE) need ``Authorization: Bearer $RLTRADE_API_TOKEN`` when that
variable is set. A job's groups and overrides are composed and validated with Hydra's compose API
(and the project's registry and range checks) before anything starts: a bad one is a 422 whose
detail lists the valid names. Paths in requests must stay inside the project (400 otherwise).
"""

import asyncio
import json
import os
import sqlite3
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import torch
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from src import registry
from src.api import runs
from src.api.jobs import ROOT, JobStore, job_overrides
from src.api.models import (
    ActRequest,
    ActResponse,
    ConfigGroups,
    Health,
    Job,
    JobRequest,
    PaperSession,
    Point,
    RunDetail,
    RunPage,
    Sweep,
    Trade,
)
from src.tracking.mlflow_run import use_tracking_uri

CONF = ROOT / "conf"
GROUPS = ("data", "features", "env", "agent", "backtest", "scenario", "resources", "feed", "broker", "experiment")


def inside_project(path: str) -> Path:
    """``path`` resolved inside the project root; a path that escapes it is a 400."""
    resolved = (ROOT / path).resolve()
    if not resolved.is_relative_to(ROOT):
        raise HTTPException(400, f"path {path!r} is outside the project")
    return resolved


def require_token(authorization: str | None = Header(default=None)) -> None:
    token = os.environ.get("RLTRADE_API_TOKEN")
    if token and authorization != f"Bearer {token}":
        raise HTTPException(
            401,
            "missing or wrong bearer token (Authorization: Bearer $RLTRADE_API_TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def compose_job(overrides: list[str]):
    """The job's config, composed as ``python -m src.run`` would; errors -> 422 with the reason."""
    from src.config_checks import ConfigError
    from src.run import check_config

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        registry.validate(cfg)
        check_config(cfg)
    except (HydraException, registry.UnknownComponentError, ConfigError, ValueError) as error:
        raise HTTPException(422, str(error).strip()) from None
    return cfg


def config_groups() -> dict[str, list[str]]:
    """Every config group and its options, from Hydra's config repository (``conf/`` and the
    ``experiments/`` folder served by the project's search-path plugin)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return {group: sorted(loader.get_group_options(group)) for group in GROUPS}


class Metrics:
    """Prometheus metrics of this server (its own registry)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rltrade_api_requests", "API requests", ["method", "path", "status"], registry=self.registry
        )
        self.latency = Histogram("rltrade_api_request_seconds", "API request latency", ["path"], registry=self.registry)
        self.jobs = Gauge("rltrade_jobs", "jobs by status", ["status"], registry=self.registry)
        self.equity = Gauge("rltrade_paper_equity", "last journaled equity", ["session"], registry=self.registry)
        self.decision = Gauge("rltrade_paper_latency_ms", "last decision latency", ["session"], registry=self.registry)


def paper_dir() -> Path:
    """Where paper journals are (``RLTRADE_PAPER_DIR``, default the project's ``paper_runs``)."""
    return Path(os.environ.get("RLTRADE_PAPER_DIR") or ROOT / "paper_runs").resolve()


def read_journal(path: Path, query: str, args: tuple = ()) -> list[tuple]:
    """Rows of a session journal, read-only (the session may be writing it)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(query, args).fetchall()


def create_app(jobs_dir: Path | None = None, max_jobs: int | None = None) -> FastAPI:
    """The API; ``jobs_dir`` (default ``outputs/jobs``) holds the job store."""
    use_tracking_uri(None)
    store = JobStore(
        jobs_dir or ROOT / "outputs" / "jobs", max_jobs or int(os.environ.get("RLTRADE_API_MAX_JOBS", "2"))
    )
    metrics = Metrics()
    stop = threading.Event()

    def ticker():
        while not stop.wait(0.5):
            store.tick()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        thread = threading.Thread(target=ticker, daemon=True)
        thread.start()
        yield
        stop.set()
        thread.join(5)
        store.close()

    app = FastAPI(
        title="rltrade API",
        lifespan=lifespan,
        description="Runs, sweeps, stress tests, jobs and paper sessions of rltrade.",
    )
    app.state.store = store
    policies: dict[tuple[str, float], tuple] = {}

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    @app.get("/health", response_model=Health)
    def health() -> Health:
        return Health(tracking_uri=runs.mlflow.get_tracking_uri(), jobs_running=store.running())

    @app.get("/runs", response_model=RunPage)
    def list_runs(
        agent: str | None = None,
        data: str | None = None,
        status: str | None = None,
        mode: str | None = None,
        scenario: str | None = None,
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1, le=500),
    ) -> RunPage:
        clauses = [f"params.`{k}.name` = '{v}'" for k, v in (("agent", agent), ("data", data)) if v]
        clauses += [f"attributes.status = '{status}'"] if status else []
        clauses += [f"params.mode = '{mode}'"] if mode else []
        for value in (agent, data, status, mode):
            if value and not value.replace("_", "").replace("-", "").isalnum():
                raise HTTPException(400, f"bad filter value {value!r}")
        rows, total = runs.search(" and ".join(clauses), 0, 5000)
        if scenario:
            rows = [r for r in rows if r.scenario == scenario]
            total = len(rows)
        return RunPage(runs=rows[offset : offset + limit], total=total, offset=offset, limit=limit)

    def run_or_404(run_id: str):
        run = runs.get(run_id)
        if run is None:
            raise HTTPException(404, f"no run {run_id!r}")
        return run

    @app.get("/runs/{run_id}", response_model=RunDetail)
    def get_run(run_id: str) -> RunDetail:
        return runs.detail(run_or_404(run_id))

    def csv_or_404(run_id: str, name: str):
        run_or_404(run_id)
        frame = runs.artifact_frame(run_id, name)
        if frame is None:
            raise HTTPException(404, f"run {run_id} has no {name} (a sweep trial, stress or paper run)")
        return frame

    @app.get("/runs/{run_id}/equity", response_model=list[Point])
    def equity(run_id: str) -> list[Point]:
        frame = csv_or_404(run_id, "equity.csv")
        stamps = frame.iloc[:, 0].astype(str)
        baseline = frame["buy_and_hold"] if "buy_and_hold" in frame else [None] * len(frame)
        return [Point(timestamp=t, value=v, baseline=b) for t, v, b in zip(stamps, frame["equity"], baseline)]

    @app.get("/runs/{run_id}/artifacts/{path:path}")
    def artifact(run_id: str, path: str) -> FileResponse:
        """Download one artifact of a run (no path outside the run's artifacts)."""
        run = run_or_404(run_id)
        root = Path(run.info.artifact_uri.removeprefix("file://")).resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root):
            raise HTTPException(400, f"artifact path {path!r} leaves the run's artifacts")
        if not target.is_file():
            raise HTTPException(404, f"run {run_id} has no artifact {path!r}")
        return FileResponse(target, filename=target.name)

    @app.get("/runs/{run_id}/trades", response_model=list[Trade])
    def trades(run_id: str) -> list[Trade]:
        frame = csv_or_404(run_id, "trades.csv").fillna({"reason": ""})
        return [Trade(**{**r, "timestamp": str(r["timestamp"])}) for r in frame.to_dict("records")]

    @app.get("/runs/{run_id}/history/{key:path}", response_model=list[Point])
    def history(run_id: str, key: str) -> list[Point]:
        """A metric's values by step (training curves: step = frames)."""
        run_or_404(run_id)
        return [Point(timestamp=str(m.step), value=m.value) for m in runs.client().get_metric_history(run_id, key)]

    @app.get("/runs/{run_id}/stress")
    def stress(run_id: str) -> dict:
        """A ``mode=stress`` run's table: {scenario: {agent: metrics}}."""
        run_or_404(run_id)
        try:
            path = runs.mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="stress.json")
        except (runs.mlflow.exceptions.MlflowException, OSError):
            raise HTTPException(404, f"run {run_id} is not a stress run (no stress.json)") from None
        return json.loads(Path(path).read_text())

    @app.get("/sweeps/{parent_id}", response_model=Sweep)
    def sweep(parent_id: str) -> Sweep:
        parent = run_or_404(parent_id)
        trials = [runs.detail(r) for r in runs.children(parent_id)]
        return Sweep(parent=runs.row(parent), metric=parent.data.params.get("sweep.metric"), trials=trials)

    @app.get("/configs", response_model=ConfigGroups)
    def configs() -> ConfigGroups:
        return ConfigGroups(groups=config_groups())

    @app.post("/jobs", response_model=Job, status_code=201, dependencies=[Depends(require_token)])
    def submit(request: JobRequest) -> Job:
        overrides = job_overrides(request)
        for override in overrides:
            if "hydra." in override.split("=")[0]:
                raise HTTPException(422, f"{override!r}: hydra.* settings are the server's")
            key, _, value = override.partition("=")
            if key.endswith(("checkpoint", "path")) and value not in ("", "null"):
                inside_project(value)
        compose_job(overrides)
        return store.submit(request)

    @app.get("/jobs", response_model=list[Job])
    def list_jobs() -> list[Job]:
        return store.all()

    @app.get("/jobs/{job_id}", response_model=Job)
    def get_job(job_id: str) -> Job:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    @app.delete("/jobs/{job_id}", response_model=Job, dependencies=[Depends(require_token)])
    def cancel(job_id: str) -> Job:
        job = store.cancel(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    @app.get("/paper/sessions", response_model=list[PaperSession])
    def sessions() -> list[PaperSession]:
        out = []
        for path in sorted(paper_dir().glob("*.db")):
            bars = read_journal(path, "SELECT count(*), max(ts) FROM bars WHERE history = 0")[0]
            fills = read_journal(path, "SELECT count(*) FROM fills")[0][0]
            last = read_journal(path, "SELECT equity FROM equity ORDER BY ts DESC LIMIT 1")
            out.append(
                PaperSession(
                    session=path.stem,
                    bars=bars[0],
                    fills=fills,
                    equity=last[0][0] if last else None,
                    last_bar=None if bars[1] is None else str(np.datetime64(bars[1], "ms")),
                )
            )
        return out

    @app.get("/paper/{session}/events")
    async def events(session: str, follow: bool = True, after: int = 0) -> StreamingResponse:
        """Server-sent events of the session's equity rows and fills after bar ``after`` (ms);
        ``follow=false`` sends what is there and ends."""
        path = paper_dir() / f"{session}.db"
        if not path.resolve().is_relative_to(paper_dir()) or not path.is_file():
            raise HTTPException(404, f"no paper session {session!r}")

        async def stream():
            last = after
            while True:
                rows = read_journal(
                    path,
                    "SELECT e.ts, e.equity, e.position, d.latency_ms FROM equity e "
                    "LEFT JOIN decisions d ON d.ts = e.ts WHERE e.ts > ? ORDER BY e.ts",
                    (last,),
                )
                fills = read_journal(
                    path,
                    "SELECT ts, side, units, price, fee, reason FROM fills WHERE ts > ? ORDER BY ts, rowid",
                    (last,),
                )
                for ts, side, units, price, fee, reason in fills:
                    fill = dict(ts=ts, side=side, units=units, price=price, fee=fee, reason=reason)
                    yield f"event: fill\ndata: {json.dumps(fill)}\n\n"
                for ts, value, position, latency in rows:
                    payload = dict(ts=ts, equity=value, position=position, latency_ms=latency)
                    yield f"event: equity\ndata: {json.dumps(payload)}\n\n"
                    last = ts
                if not follow:
                    return
                await asyncio.sleep(0.5)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/act", response_model=ActResponse, dependencies=[Depends(require_token)])
    def act(request: ActRequest) -> ActResponse:
        path = inside_project(request.checkpoint)
        if not path.is_file() or not (path.parent / "config.yaml").is_file():
            raise HTTPException(404, f"no policy at {request.checkpoint!r} (policy.pt beside its run's config.yaml)")
        agent, actions = _policy(path)
        market = torch.tensor([request.market], dtype=torch.float32)
        window, features = agent.window_size, agent.n_features
        if market.shape[1:] != (window, features):
            raise HTTPException(422, f"market must be ({window}, {features}); got {tuple(market.shape[1:])}")
        started = time.perf_counter()
        action = agent.act(market, torch.tensor([request.account], dtype=torch.float32))
        target = float(actions.to_targets(action)[0])
        return ActResponse(action=action.tolist()[0], target=target, latency_ms=(time.perf_counter() - started) * 1e3)

    def _policy(path: Path):
        key = (str(path), path.stat().st_mtime)
        if key not in policies:
            from src.agents.ppo import PPOAgent
            from src.envs.torchrl_env import action_space

            cfg = OmegaConf.load(path.parent / "config.yaml")
            contract = torch.load(path, weights_only=True)["contract"]
            actions = action_space(cfg.env)
            agent = PPOAgent(
                cfg.agent, cfg.env.window_size, len(contract["features"]), actions, actions.spec(1), cfg.seed
            )
            agent.load(path, contract)
            policies[key] = (agent, actions)
        return policies[key]

    @app.get("/metrics")
    def prometheus() -> Response:
        counts = store.counts()
        for status in ("queued", "running", "finished", "failed", "cancelled"):
            metrics.jobs.labels(status).set(counts.get(status, 0))
        for path in paper_dir().glob("*.db"):
            equity = read_journal(path, "SELECT equity FROM equity ORDER BY ts DESC LIMIT 1")
            latency = read_journal(path, "SELECT latency_ms FROM decisions ORDER BY ts DESC LIMIT 1")
            if equity:
                metrics.equity.labels(path.stem).set(equity[0][0])
            if latency:
                metrics.decision.labels(path.stem).set(latency[0][0])
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
