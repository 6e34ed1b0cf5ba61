"""Hydra override grammar -> Ray Tune search space.

| Hydra                        | Ray Tune                 |
| ---------------------------- | ------------------------ |
| a,b,c                        | grid_search([a, b, c])   |
| choice(a,b,c)                | choice([a, b, c])        |
| range(start, stop, step)     | grid_search(range)       |
| tag(choice, range(...))      | choice(range)            |
| interval(a, b)               | uniform(a, b)            |
| tag(log, interval(a, b))     | loguniform(a, b)         |
| int(interval(a, b))          | randint(a, b + 1)        |
| tag(log, int(interval(a,b))) | lograndint(a, b + 1)     |
| plain value                  | fixed for every trial    |
"""

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep


def to_tune(override: Override) -> Any:
    """The Ray Tune domain for one sweep override."""
    from ray import tune  # imported when a sweep runs, not when Hydra discovers the plugin

    value = override.value()
    if isinstance(value, ChoiceSweep):
        options = list(value.list)
        return tune.grid_search(options) if value.simple_form else tune.choice(options)
    if isinstance(value, RangeSweep):
        options = list(value.range())
        return tune.choice(options) if "choice" in value.tags else tune.grid_search(options)
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return (tune.lograndint if log else tune.randint)(value.start, value.end + 1)
        if value.start is None or value.end is None:
            raise ValueError(f"{override.input_line}: an interval needs both ends")
        return (tune.loguniform if log else tune.uniform)(value.start, value.end)
    raise ValueError(f"{override.input_line}: unsupported sweep for Ray Tune")


def parse(arguments: list[str], params: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(search space keyed by config key, fixed overrides) from CLI ``arguments`` and ``params``.

    Command-line arguments win over ``hydra.sweeper.params`` for the same key.
    """
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = to_tune(override)
        else:
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
    return space, list(fixed.values())
