"""Closed bars from candle updates: the still-forming candle never reaches a decision.

A candle is ``(open time ms, open, high, low, close, volume)``. Updates of the open candle replace
each other; the candle closes when the first update of a later candle arrives, or when the clock
passes its end plus a grace period (``close_due``). An update for a candle that has already
closed (a duplicate, a late or out-of-order message) is dropped and counted.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

Candle = tuple[int, float, float, float, float, float]


def as_candle(row: Sequence[float]) -> Candle:
    """(open time ms, open, high, low, close, volume) from any sequence of six numbers."""
    t, o, h, low, c, v = row
    return int(t), float(o), float(h), float(low), float(c), float(v)


@dataclass
class ClosedBars:
    """``step_ms``: the bar length; ``last_closed``: open time of the last bar already emitted."""

    step_ms: int
    last_closed: int | None = None
    forming: Candle | None = None
    duplicates: int = 0  # updates for a bar already closed, identical to what was emitted
    out_of_order: int = 0  # updates for a bar already closed that differ (late or reordered)
    emitted: dict[int, Candle] = field(default_factory=dict)  # open time -> the bar emitted (recent ones)

    def update(self, candle: Candle) -> list[Candle]:
        """Bars that the update ``candle`` closes, oldest first."""
        stamp = int(candle[0])
        if self.last_closed is not None and stamp <= self.last_closed:
            if tuple(self.emitted.get(stamp, ())) == tuple(candle):
                self.duplicates += 1
            else:
                self.out_of_order += 1
            return []
        closed = []
        if self.forming is not None and stamp > self.forming[0]:
            closed.append(self._emit(self.forming))
        if self.forming is not None and stamp < self.forming[0]:
            self.out_of_order += 1  # an older candle after a newer one started
            return closed
        self.forming = as_candle(candle)
        return closed

    def close_due(self, now_ms: int, grace_ms: int) -> list[Candle]:
        """The forming bar, if the clock has passed its end by ``grace_ms``."""
        if self.forming is not None and now_ms >= self.forming[0] + self.step_ms + grace_ms:
            return [self._emit(self.forming)]
        return []

    def accept(self, candle: Candle) -> bool:
        """A closed bar from elsewhere (REST backfill): True if it is new, in order."""
        stamp = int(candle[0])
        if self.last_closed is not None and stamp <= self.last_closed:
            self.duplicates += 1
            return False
        if self.forming is not None and stamp >= self.forming[0]:
            self.forming = None  # the backfill has the final version of that candle
        self._emit(as_candle(candle))
        return True

    def _emit(self, candle: Candle) -> Candle:
        self.last_closed = int(candle[0])
        self.forming = None if self.forming is not None and self.forming[0] == candle[0] else self.forming
        self.emitted[int(candle[0])] = candle
        if len(self.emitted) > 64:
            self.emitted.pop(min(self.emitted))
        return candle
