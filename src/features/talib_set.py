"""Any list of TA-Lib functions, configured in YAML (``conf/features/ta_full.yaml``).

Each entry names a TA-Lib function (``fn``) and the parameters to set; ``price_scale: true``
divides its outputs by the close (for indicators measured in price units). Columns are named
``$<output>_<parameter values>``: ``$rsi_14``, ``$macd_12_26_9``, ``$upperband_20_2_2``; a
single-output function uses its own name (``$sma_20``).
"""

from functools import partial

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from talib import abstract

from src.config_checks import ConfigError
from src.features.pipeline import FeatureSet
from src.registry import register

INPUTS = {"open": "$open", "high": "$high", "low": "$low", "close": "$close", "volume": "$volume"}


def _suffix(params: dict) -> str:
    return "".join(f"_{v:g}" if isinstance(v, float) else f"_{v}" for v in params.values())


def indicator(
    df_arrays: dict[str, np.ndarray], fn: str, params: dict, price_scale: bool
) -> tuple[dict[str, np.ndarray], int]:
    """({column: values}, look-back) of one TA-Lib function."""
    try:
        function = abstract.Function(fn)  # type: ignore[attr-defined]  # missing from talib's stubs
    except Exception:  # noqa: BLE001 - talib raises a bare Exception for unknown names
        raise ValueError(f"features.indicators: unknown TA-Lib function {fn!r}") from None
    function.parameters = params
    outputs = function(df_arrays)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    names = function.output_names if len(outputs) > 1 else [fn.lower()]
    columns = {
        f"${name.lower()}{_suffix(params)}": np.asarray(values, np.float64) for name, values in zip(names, outputs)
    }
    if price_scale:
        for values in columns.values():
            values /= df_arrays["close"]  # TA-Lib's own output array: no copy
    return columns, function.lookback


def talib_features(df: pd.DataFrame, indicators: list[dict]) -> tuple[dict[str, np.ndarray], int]:
    """All configured indicators of ``df`` ({column: values}), and the largest look-back among
    them."""
    arrays = {name: df[column].to_numpy(dtype=np.float64) for name, column in INPUTS.items()}
    columns: dict[str, np.ndarray] = {}
    lookback = 0
    for entry in indicators:
        entry = dict(entry)
        fn, price_scale = entry.pop("fn"), entry.pop("price_scale", False)
        values, entry_lookback = indicator(arrays, fn, entry, price_scale)
        duplicate = set(values) & set(columns)
        if duplicate:
            raise ValueError(f"features.indicators: {sorted(duplicate)} configured twice")
        columns.update(values)
        lookback = max(lookback, entry_lookback)
    return columns, lookback


@register("features", "talib")
def build_talib(cfg) -> FeatureSet:
    indicators = OmegaConf.to_container(cfg.indicators, resolve=True)
    if not isinstance(indicators, list):
        raise ConfigError(f"features.indicators must be a list of {{fn: ..., params}}; got {indicators!r}")
    return FeatureSet(cfg.set_name, partial(talib_features, indicators=indicators), cfg)
