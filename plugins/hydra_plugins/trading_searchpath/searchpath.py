"""Add ``experiments/`` (the project root's, or $RLTRADE_EXPERIMENTS_DIR) to Hydra's search path."""

import os

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


def experiments_dir() -> str:
    return os.path.abspath(os.environ.get("RLTRADE_EXPERIMENTS_DIR", "experiments"))


class TradingSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="rltrade-experiments", path=f"experiments://{experiments_dir()}")
