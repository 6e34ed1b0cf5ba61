import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from src.data.synthetic import synthetic_ohlcv
from src import registry

ROOT = Path(__file__).resolve().parents[1]


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The run's config as ``python -m src.run OVERRIDES`` would compose it."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides or [], return_hydra_config=False)


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
