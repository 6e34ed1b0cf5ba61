"""The live observation: the batch feature pipeline run on the bars seen so far.

Features only look back, so the row of bar t computed from bars <= t equals the row computed
from the whole history (the property ``tests/test_paper.py`` checks); a checkpoint's fitted
normaliser statistics are applied unchanged. The frame also carries the risk columns
(``@size``, ``@stop_unit``, ...) that the broker's kernel reads.
"""

import numpy as np
import pandas as pd

from src.backtest.sizing import with_risk_columns
from src.envs.torchrl_env import feature_columns
from src.features.pipeline import FeatureSet


class Observer:
    """``frame(raw)`` -> featurised bars; ``window(frame)`` -> (1, window_size, F) float32."""

    def __init__(self, featurize: FeatureSet, backtest_cfg, window_size: int, scaler: dict, columns: list[str]):
        self.featurize, self.backtest_cfg = featurize, backtest_cfg
        self.window_size, self.scaler, self.columns = window_size, scaler, columns

    def frame(self, raw: pd.DataFrame) -> pd.DataFrame | None:
        """Features and risk columns of ``raw`` (None while the warm-up is not over)."""
        try:
            features = self.featurize.with_scaler(raw, self.scaler)
        except ValueError:  # fewer bars than the indicators' warm-up
            return None
        if len(features) < 2:
            return None
        if feature_columns(features) != self.columns:
            raise ValueError(f"live features {feature_columns(features)} differ from the policy's {self.columns}")
        return with_risk_columns(features, self.backtest_cfg)

    def window(self, frame: pd.DataFrame) -> np.ndarray | None:
        """The observation window ending at the frame's last bar, or None if too short."""
        if frame is None or len(frame) < self.window_size:
            return None
        rows = frame[self.columns].to_numpy(dtype=np.float32)[-self.window_size :]
        return rows[None].copy()  # a writable, contiguous (1, window, F) array
