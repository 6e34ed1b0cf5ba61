"""A dozen TA-Lib indicators, scale-free, each a function of bars <= t only.

Indicators that live on the price scale (MACD, ATR) are divided by the close so the features of a
$10 and a $10,000 market are comparable.
"""

import numpy as np
import pandas as pd
import talib

from src.data.validate import OHLCV
from src.features.pipeline import FeatureSet
from src.registry import register


def ta_basic_features(df: pd.DataFrame) -> tuple[dict[str, np.ndarray], None]:
    """$-prefixed indicator columns of ``df`` ({column: values}; NaN during each indicator's
    warm-up)."""
    open_, high, low, close, volume = (df[c].to_numpy(dtype=float) for c in OHLCV)
    macd, macd_signal, macd_hist = talib.MACD(close, 12, 26, 9)
    upper, middle, lower = talib.BBANDS(close, 20, 2.0, 2.0)
    stoch_k, stoch_d = talib.STOCH(high, low, close, 14, 3, talib.MA_Type.SMA, 3, talib.MA_Type.SMA)
    columns = {
        "$logret_1": np.log(close / np.r_[np.nan, close[:-1]]),
        "$range_1": (high - low) / close,
        "$body_1": (close - open_) / close,
        "$rsi_14": talib.RSI(close, 14),
        "$macd_12_26_9": macd / close,
        "$macdsignal_12_26_9": macd_signal / close,
        "$macdhist_12_26_9": macd_hist / close,
        "$sma_ratio_20": close / talib.SMA(close, 20) - 1.0,
        "$ema_ratio_50": close / talib.EMA(close, 50) - 1.0,
        "$bbands_pctb_20": (close - lower) / (upper - lower),
        "$natr_14": talib.NATR(high, low, close, 14),
        "$adx_14": talib.ADX(high, low, close, 14),
        "$cci_14": talib.CCI(high, low, close, 14),
        "$mfi_14": talib.MFI(high, low, close, volume, 14),
        "$willr_14": talib.WILLR(high, low, close, 14),
        "$roc_10": talib.ROC(close, 10),
        "$stoch_k_14": stoch_k,
        "$stoch_d_14": stoch_d,
        "$volume_ratio_20": volume / talib.SMA(volume, 20),
    }
    return columns, None


@register("features", "ta_basic")
def build_ta_basic(cfg) -> FeatureSet:
    return FeatureSet("ta_basic", ta_basic_features, cfg)
