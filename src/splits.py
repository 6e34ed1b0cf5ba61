"""Train / validation / test split by time, never shuffled."""

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class SplitBounds:
    """Row positions: train = [0, validation), validation = [validation, test), test = [test, end)."""

    validation: int
    test: int
    end: int


def split_bounds(n_rows: int, train: float, validation: float) -> SplitBounds:
    if not (0 < train and 0 < validation and train + validation < 1):
        raise ValueError(
            f"split.train={train}, split.validation={validation}: need both > 0 and "
            "train + validation < 1 (the rest is the test split)"
        )
    return SplitBounds(int(n_rows * train), int(n_rows * (train + validation)), n_rows)


def with_history(df: pd.DataFrame, start: int, end: int, history: int) -> pd.DataFrame:
    """Rows [start, end) plus the ``history`` rows before ``start`` (past bars, for the window)."""
    return df.iloc[max(start - history, 0) : end]
