"""Scenario injectors: small pure functions that stress a window of bars, seeded.

Signature: ``inject(df, start, cfg) -> (df, marks)``. ``df`` is the full bar history (OHLCV plus
optional per-bar cost multipliers ``@fee_scale`` / ``@slippage_scale``); only bars from row
``start`` on may change; ``marks`` lists the (first, last) timestamps of what was injected.
Inputs are never modified. Every parameter has a valid range (``PARAMS``), checked before any work.

Price injectors rebuild each injected bar from its transformed *intrabar path* (``rebuild``): a
bar is its opening gap log(open / previous close) and its moves from the open to the high, low and
close. The gap is kept, so the open follows the previous close as in the original bars; the
scenario transforms the moves inside the bar, so a shock unfolds inside the bar and across bars
and the range widens with volatility. Bars after the window keep their own gaps and moves, at the
level the window ended on (their returns are the original ones).
- ``volatility_spike``: moves x ``factor`` (range x factor, close-to-close volatility ~x factor).
- ``trend_reversal``: moves mirrored (the high becomes the low): the trend turns, range unchanged.
- ``flash_crash``: a fall by ``drop`` over ``crash_bars``, then a recovery of ``recovery`` of the
  loss over ``recovery_bars``; each bar's share d of the path is added to its move and widens its
  range by |d| on the side it moves.
"""

from collections.abc import Callable

import numpy as np
import pandas as pd

from src.config_checks import COUNT, FRACTION, OPEN_FRACTION, POSITIVE, ConfigError, Range, check_value
from src.data.validate import OHLCV
from src.registry import register

PRICES = OHLCV[:4]
FEE_SCALE, SLIPPAGE_SCALE = "@fee_scale", "@slippage_scale"
PARAMS: dict[str, dict[str, Range]] = {}  # scenario name -> {parameter: valid range}
Moves = tuple[np.ndarray, np.ndarray, np.ndarray]  # log(high/open), log(low/open), log(close/open)


def injector(name: str, **ranges: Range) -> Callable:
    """Register an injector as ``scenario=<name>`` with the valid range of each parameter."""
    PARAMS[name] = ranges
    return register("scenario", name)


def check_params(scenario_cfg) -> None:
    """Every parameter of every selected scenario ({name: params}) is in its range."""
    for name, params in scenario_cfg.items():
        for key, valid in PARAMS.get(name, {}).items():
            check_value(f"scenario.{name}.{key}", params.get(key), valid)


def window(df: pd.DataFrame, start: int, cfg, name: str) -> tuple[int, int]:
    """[first, end) rows of the injected window: at ``cfg.at`` (fraction of the rows after
    ``start``) or at a seeded random row, ``cfg.bars`` long; it must fit inside the rows."""
    span, length = len(df) - start, int(cfg["bars"])
    if length >= span:
        raise ConfigError(
            f"scenario.{name}: {length} bars do not fit the {span} bars of the "
            f"stressed split; valid: fewer than {span} (or more data)"
        )
    if cfg.get("at") is not None:
        first = start + int(cfg["at"] * span)
    else:
        first = start + int(np.random.default_rng(cfg["seed"]).integers(0, span - length))
    if first + length > len(df):
        raise ConfigError(
            f"scenario.{name}.at={cfg['at']}: a window of {length} bars from row "
            f"{first - start} runs past the end of the {span} bars of the stressed "
            f"split; valid: at <= {(span - length) / span:.3f}"
        )
    return first, first + length


def rebuild(df: pd.DataFrame, first: int, end: int, transform: Callable[[Moves], Moves]) -> pd.DataFrame:
    """``df`` with bars [first, end) rebuilt from ``transform``-ed intrabar moves (see the module
    docstring); bars before ``first`` are untouched, later bars follow at the new level."""
    o, h, l, c = (df[column].to_numpy(np.float64) for column in PRICES)
    previous = np.r_[o[0], c[:-1]]
    gap = np.log(o / previous)
    up, down, move = np.log(h / o), np.log(l / o), np.log(c / o)
    up[first:end], down[first:end], move[first:end] = transform((up[first:end], down[first:end], move[first:end]))
    log_close = np.log(c)
    base = np.log(previous[first])
    log_close[first:] = base + np.cumsum(gap[first:] + move[first:])
    log_open = np.r_[base, log_close[first:-1]] + gap[first:]
    bars = np.exp(np.stack([log_open, log_open + up[first:], log_open + down[first:], log_close[first:]], axis=1))
    bars[:, 1] = bars.max(axis=1)  # a close at the high: equal up to rounding of the two sums
    bars[:, 2] = bars.min(axis=1)
    out = df.copy()
    out.iloc[first:, [out.columns.get_loc(p) for p in PRICES]] = bars
    return out


def _marks(df: pd.DataFrame, first: int, end: int) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    return [(df.index[first], df.index[end - 1])]


@injector("none")
def none(df: pd.DataFrame, start: int, cfg):
    return df, []


@injector(
    "flash_crash",
    drop=Range(0, 1, low_open=True, high_open=True),
    crash_bars=COUNT,
    recovery=FRACTION,
    recovery_bars=COUNT,
    at=OPEN_FRACTION,
    volume_spike=POSITIVE,
)
def flash_crash(df: pd.DataFrame, start: int, cfg):
    """Fall by ``drop`` over ``crash_bars``, recover ``recovery`` of the loss over
    ``recovery_bars``, volume x ``volume_spike`` meanwhile."""
    first, end = window(df, start, {**cfg, "bars": cfg.crash_bars + cfg.recovery_bars}, "flash_crash")
    bottom, settled = 1.0 - cfg.drop, 1.0 - cfg.drop * (1.0 - cfg.recovery)
    down = bottom ** (np.arange(1, cfg.crash_bars + 1) / cfg.crash_bars)
    up = bottom * (settled / bottom) ** (np.arange(1, cfg.recovery_bars + 1) / cfg.recovery_bars)
    shock = np.diff(np.log(np.r_[1.0, down, up]))  # each bar's share of the path, log

    def crash(moves: Moves) -> Moves:
        high, low, close = moves
        return high + np.maximum(shock, 0.0), low + np.minimum(shock, 0.0), close + shock

    out = rebuild(df, first, end, crash)
    out.iloc[first:end, out.columns.get_loc("$volume")] *= cfg.volume_spike
    return out, _marks(df, first, end)


@injector("low_liquidity", volume_scale=POSITIVE, slippage_scale=POSITIVE)
def low_liquidity(df: pd.DataFrame, start: int, cfg):
    """Volume x ``volume_scale`` and slippage x ``slippage_scale`` from ``start`` on."""
    out = df.copy()
    out.iloc[start:, out.columns.get_loc("$volume")] *= cfg.volume_scale
    scale = out[SLIPPAGE_SCALE].to_numpy().copy() if SLIPPAGE_SCALE in out else np.ones(len(out))
    scale[start:] *= cfg.slippage_scale
    out[SLIPPAGE_SCALE] = scale
    return out, _marks(df, start, len(df))


@injector("volatility_spike", factor=POSITIVE, bars=COUNT, at=OPEN_FRACTION)
def volatility_spike(df: pd.DataFrame, start: int, cfg):
    """Intrabar moves x ``factor`` over the window: range and volatility scale together."""
    first, end = window(df, start, cfg, "volatility_spike")
    out = rebuild(df, first, end, lambda moves: tuple(m * cfg.factor for m in moves))
    return out, _marks(df, first, end)


@injector("trend_reversal", bars=COUNT, at=OPEN_FRACTION)
def trend_reversal(df: pd.DataFrame, start: int, cfg):
    """Intrabar moves mirrored over the window (r -> -r, high <-> low): the trend turns."""
    first, end = window(df, start, cfg, "trend_reversal")
    out = rebuild(df, first, end, lambda moves: (-moves[1], -moves[0], -moves[2]))
    return out, _marks(df, first, end)


@injector("fee_spike", factor=POSITIVE, bars=COUNT, at=OPEN_FRACTION)
def fee_spike(df: pd.DataFrame, start: int, cfg):
    """Transaction fees x ``factor`` over the window."""
    first, end = window(df, start, cfg, "fee_spike")
    out = df.copy()
    scale = out[FEE_SCALE].to_numpy().copy() if FEE_SCALE in out else np.ones(len(out))
    scale[first:end] *= cfg.factor
    out[FEE_SCALE] = scale
    return out, _marks(df, first, end)


@injector("gap", bars=COUNT, at=OPEN_FRACTION)
def gap(df: pd.DataFrame, start: int, cfg):
    """An exchange outage: the window's bars are missing. Orders wait for the first bar after it
    and fill at its open; no fill can happen at a time inside the gap."""
    first, end = window(df, start, cfg, "gap")
    return df.drop(df.index[first:end]), _marks(df, first, end)
