"""Config name -> component, one table per config group.

Each component module registers itself with ``@register(group, name)``; a config selects one by its
``name`` field. ``build(group, cfg, ...)`` looks the name up and calls the factory with the config.
"""
from collections.abc import Callable
from typing import Any

GROUPS = ("data", "features", "env", "agent", "backtest", "scenario", "resources", "feed")
_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {group: {} for group in GROUPS}


class UnknownComponentError(KeyError):
    """A config names a component that is not registered."""

    def __str__(self) -> str:
        return self.args[0]


def register(group: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make ``factory`` buildable as ``<group>.name=<name>``."""

    def add(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY[group]:
            raise ValueError(f"{group}={name!r} is registered twice")
        _REGISTRY[group][name] = factory
        return factory

    return add


def _load_components() -> None:
    """Import every module that registers components (imports are cheap and idempotent)."""
    import src.agents  # noqa: F401
    import src.backtest.engine  # noqa: F401
    import src.data  # noqa: F401
    import src.envs  # noqa: F401
    import src.features  # noqa: F401
    import src.live.feeds  # noqa: F401
    import src.resources  # noqa: F401
    import src.scenarios  # noqa: F401


def names(group: str) -> list[str]:
    _load_components()
    return sorted(_REGISTRY[group])


def lookup(group: str, name: str) -> Callable[..., Any]:
    """The factory for ``name`` in ``group``; an unknown name lists the valid ones."""
    _load_components()
    if group not in _REGISTRY:
        raise UnknownComponentError(f"unknown config group {group!r}; groups: {', '.join(GROUPS)}")
    try:
        return _REGISTRY[group][name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY[group]))
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
