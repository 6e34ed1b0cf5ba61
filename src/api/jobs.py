"""Jobs: ``python -m src.run`` subprocesses, queued beyond ``max_jobs``, their state in SQLite.

A job's process runs in its own session (it survives a browser closing and an API restart); its
exit code is written beside its log by a shell wrapper, so an API restarted while the job ran
still learns how it ended. ``JobStore.tick`` starts queued jobs and records finished ones; the
API calls it from a background thread.
"""

import json
import os
import signal
import sqlite3
import subprocess  # nosec B404
import sys
import threading
import time
import uuid
from pathlib import Path

from src.api.models import Job, JobRequest

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = """CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, kind TEXT, overrides TEXT,
    status TEXT, created REAL, started REAL, ended REAL, returncode INTEGER, pid INTEGER,
    output_dir TEXT)"""
KIND_OVERRIDES = {"run": [], "stress": ["mode=stress"], "backtest": [], "paper": ["mode=paper", "paper.panel=false"]}


def job_overrides(request: JobRequest) -> list[str]:
    """The command-line overrides of a job: its kind, group choices, then its own overrides."""
    return (
        KIND_OVERRIDES[request.kind]
        + [f"{group}={option}" for group, option in request.groups.items()]
        + list(request.overrides)
    )


class JobStore:
    """Jobs of one API server: ``directory`` holds ``jobs.db`` and one folder per job."""

    def __init__(self, directory: Path, max_jobs: int = 2, env: dict | None = None):
        self.directory, self.max_jobs = Path(directory), max_jobs
        self.directory.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.directory / "jobs.db", check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(SCHEMA)

    def submit(self, request: JobRequest) -> Job:
        job_id = uuid.uuid4().hex[:12]
        output = self.directory / job_id
        output.mkdir()
        with self.lock:
            self.db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, 'queued', ?, NULL, NULL, NULL, NULL, ?)",
                (job_id, request.kind, json.dumps(job_overrides(request)), time.time(), str(output)),
            )
        self.tick()
        job = self.get(job_id)
        if job is None:
            raise RuntimeError(f"job {job_id} vanished from {self.directory} right after it was queued")
        return job

    def get(self, job_id: str) -> Job | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._job(row)

    def all(self) -> list[Job]:
        return [self._job(row) for row in self.db.execute("SELECT * FROM jobs ORDER BY created DESC")]

    def running(self) -> int:
        return self.counts().get("running", 0)

    def counts(self) -> dict[str, int]:
        """Jobs by status."""
        return dict(self.db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is None or job.status in ("finished", "failed", "cancelled"):
            return job
        with self.lock:
            pid = self.db.execute("SELECT pid FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            if pid:
                try:
                    os.killpg(pid, signal.SIGINT)  # the run ends cleanly (MLflow run closed)
                except ProcessLookupError:
                    pass
            self.db.execute("UPDATE jobs SET status = 'cancelled', ended = ? WHERE id = ?", (time.time(), job_id))
        return self.get(job_id)

    def tick(self) -> None:
        """Record jobs that ended; start queued ones while fewer than ``max_jobs`` run."""
        with self.lock:
            for job_id, pid, output in self.db.execute(
                "SELECT id, pid, output_dir FROM jobs WHERE status = 'running'"
            ).fetchall():
                rc_file = Path(output) / "returncode"
                if rc_file.is_file():
                    rc = int(rc_file.read_text().strip() or 1)
                    self.db.execute(
                        "UPDATE jobs SET status = ?, ended = ?, returncode = ? WHERE id = ?",
                        ("finished" if rc == 0 else "failed", time.time(), rc, job_id),
                    )
                elif not _alive(pid):
                    self.db.execute("UPDATE jobs SET status = 'failed', ended = ? WHERE id = ?", (time.time(), job_id))
            free = self.max_jobs - self.running()
            for job_id, overrides, output in self.db.execute(
                "SELECT id, overrides, output_dir FROM jobs WHERE status = 'queued' ORDER BY created LIMIT ?",
                (max(free, 0),),
            ).fetchall():
                pid = self._start(json.loads(overrides), Path(output))
                self.db.execute(
                    "UPDATE jobs SET status = 'running', started = ?, pid = ? WHERE id = ?", (time.time(), pid, job_id)
                )

    def _start(self, overrides: list[str], output: Path) -> int:
        command = [sys.executable, "-m", "src.run", *overrides, f"hydra.run.dir={output / 'run'}"]
        wrapper = ["bash", "-c", '"$@" > "$0/log.txt" 2>&1; echo $? > "$0/returncode"', str(output), *command]
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        # an argument list (no shell parsing of request text) of our own command and validated overrides
        process = subprocess.Popen(  # nosec B603
            wrapper, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        threading.Thread(target=process.wait, daemon=True).start()  # reap it when it ends
        return process.pid

    def _job(self, row) -> Job:
        job_id, kind, overrides, status, created, started, ended, rc, _, output = row
        tail = _tail(Path(output) / "log.txt")
        progress = next((line for line in reversed(tail) if "frames" in line or "%" in line), "")
        return Job(
            id=job_id,
            kind=kind,
            overrides=json.loads(overrides),
            status=status,
            created=created,
            started=started,
            ended=ended,
            returncode=rc,
            output_dir=output,
            progress=progress,
            log_tail=tail,
        )

    def close(self) -> None:
        self.db.close()


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _tail(path: Path, lines: int = 40) -> list[str]:
    if not path.is_file():
        return []
    text = path.read_bytes()[-20_000:].decode(errors="replace").replace("\r", "\n")
    return [line for line in text.splitlines() if line.strip()][-lines:]
