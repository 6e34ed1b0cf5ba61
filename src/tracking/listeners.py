"""Extra consumers of a run's metrics besides MLflow (e.g. a Ray Tune trial reporting to ASHA)."""

from collections.abc import Callable

Listener = Callable[[dict[str, float], int], None]  # (metrics, step) -> None
_LISTENERS: list[Listener] = []


def add(listener: Listener) -> None:
    _LISTENERS.append(listener)


def remove(listener: Listener) -> None:
    _LISTENERS.remove(listener)


def notify(metrics: dict[str, float], step: int) -> None:
    for listener in list(_LISTENERS):
        listener(metrics, step)
