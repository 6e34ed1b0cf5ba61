"""Scenario injectors (importing registers them) and their composition."""

import pandas as pd

from src import registry
from src.data.validate import OHLCV, validate_ohlcv
from src.scenarios import injectors
from src.scenarios.injectors import check_params  # noqa: F401 - the scenario group's range check

Marks = list[tuple[pd.Timestamp, pd.Timestamp]]


def apply_scenarios(df: pd.DataFrame, start: int, scenario_cfg) -> tuple[pd.DataFrame, Marks]:
    """Apply each injector of ``scenario_cfg`` ({name: params}, in order) from row ``start``;
    parameters are range-checked first and each injected frame is validated again."""
    injectors.check_params(scenario_cfg)
    marks: Marks = []
    for name, params in scenario_cfg.items():
        df, injected = registry.lookup("scenario", name)(df, start, params)
        validate_ohlcv(df[OHLCV], source=f"scenario {name}")
        marks += injected
    return df, marks


def scenario_names(scenario_cfg) -> str:
    """'none', 'flash_crash', 'flash_crash+low_liquidity', ..."""
    return "+".join(scenario_cfg.keys())
