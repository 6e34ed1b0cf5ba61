import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from src import registry
from src.data.synthetic import synthetic_ohlcv

ROOT = Path(__file__).resolve().parents[1]


def compose_config(overrides: list[str] | None = None, hydra: bool = False) -> DictConfig:
    """The run's config as ``python -m src.run OVERRIDES`` would compose it (with the ``hydra``
    node when ``hydra``)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides or [], return_hydra_config=hydra)


@pytest.fixture(scope="session")
def market_df():
    """OHLCV + ta_basic features for 3,000 synthetic hourly bars."""
    featurize = registry.build("features", compose_config().features)
    return featurize(synthetic_ohlcv(3000, seed=3))


@pytest.fixture(autouse=True)
def _run_from_project_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    os.environ.setdefault("PYTHONHASHSEED", "0")


EMPTY_STORE: dict[str, Path] = {}  # "folder": where the session's empty MLflow store is made


@pytest.fixture(scope="session", autouse=True)
def _empty_store_folder(tmp_path_factory):
    EMPTY_STORE["folder"] = tmp_path_factory.mktemp("empty-mlflow-store")


def mlflow_store(folder: Path, name: str = "mlflow.db") -> str:
    """The URI of the MLflow sqlite store ``folder/name``. A new one starts as a copy of an empty
    store that MLflow itself made once in this test session: its schema migrations take about
    2 s a database, paid once instead of by every test that opens a store."""
    path = folder / name
    if not path.exists():
        empty = EMPTY_STORE["folder"] / "mlflow.db"
        if not empty.exists():
            mlflow.MlflowClient(tracking_uri=f"sqlite:///{empty}").search_experiments()
        shutil.copyfile(empty, path)
    return f"sqlite:///{path}"


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store(tmp_path), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "src.run", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def runs(tmp_path: Path, uri: str | None = None):
    """Every run of the test's MLflow store (its sqlite file, or the server at ``uri``)."""
    mlflow.set_tracking_uri(uri or f"sqlite:///{tmp_path}/mlflow.db")
    return mlflow.search_runs(experiment_names=["rltrade"], output_format="list")


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` (sqlite backend, served artifacts) on 127.0.0.1, stopped after."""
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "served"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.3)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
