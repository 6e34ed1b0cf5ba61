"""Config name -> component, one table per config group.

Each component module registers itself with ``@register(group, name)``; a config selects one by its
``name`` field. ``build(group, cfg, ...)`` looks the name up and calls the factory with the config.
"""

import importlib
from collections.abc import Callable
from typing import Any

GROUPS = ("data", "features", "env", "agent", "backtest", "scenario", "resources", "feed")
_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {group: {} for group in GROUPS}


class UnknownComponentError(KeyError):
    """A config names a component that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(group: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make ``factory`` buildable as ``<group>.name=<name>``."""

    def add(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY[group]:
            raise ValueError(f"{group}={name!r} is registered twice")
        _REGISTRY[group][name] = factory
        return factory

    return add


# the modules whose import registers each group's components: a lookup imports only its group's
# (a scenario or data lookup stays free of torch and torchrl), and the packages' __init__ import
# nothing, so importing one module (say src.data.timeframes) does not import its siblings
MODULES: dict[str, tuple[str, ...]] = {
    "data": ("src.data.ccxt_source", "src.data.file_source", "src.data.synthetic"),
    "features": ("src.features.ta_basic", "src.features.talib_set"),
    "env": ("src.envs.torchrl_env", "src.envs.multi_agent_env"),
    "agent": ("src.agents.baselines", "src.agents.ppo", "src.agents.mappo"),
    "backtest": ("src.backtest.engine",),
    "scenario": ("src.scenarios.injectors",),
    "resources": ("src.resources",),
    "feed": ("src.live.feeds",),
}


def _load_components(group: str) -> None:
    for module in MODULES[group]:
        importlib.import_module(module)  # cheap and idempotent after the first time


def names(group: str) -> list[str]:
    """The registered names of ``group``."""
    _load_components(group)
    return sorted(_REGISTRY[group])


def lookup(group: str, name: str) -> Callable[..., Any]:
    """The factory for ``name`` in ``group``; an unknown name lists the valid ones."""
    if group not in _REGISTRY:
        raise UnknownComponentError(f"unknown config group {group!r}; groups: {', '.join(GROUPS)}")
    _load_components(group)
    try:
        return _REGISTRY[group][name]
    except KeyError:
        valid = ", ".join(names(group))
        raise UnknownComponentError(
            f"unknown {group} {name!r} (config field {group}). Valid names: {valid}. "
            f"Pick one with `{group}=<name>` on the command line."
        ) from None


def build(group: str, cfg: Any, *args: Any, **kwargs: Any) -> Any:
    """Build the component ``cfg.name`` of ``group`` from its config."""
    return lookup(group, cfg.name)(cfg, *args, **kwargs)


def selected_names(node: Any) -> list[str]:
    """The components a group's config selects: its ``name``, or, for a composable group such as
    ``scenario`` ({name: params, ...}), every key."""
    return [node.name] if "name" in node else list(node.keys())


def validate(cfg: Any) -> None:
    """Fail before any work if a group of ``cfg`` names an unregistered component."""
    for group in GROUPS:
        for name in selected_names(cfg[group]):
            lookup(group, name)
