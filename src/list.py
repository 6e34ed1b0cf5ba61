"""``python -m src.list [GROUP]``: every config group, its options, and the component each builds.

A YAML option is a *preset* (its file name, what you type: ``agent=ppo_conv``); its ``name`` field
is the *component* the registry builds from it (``ppo``, with a conv1d network). Several presets
may build one component with different settings. Scenarios compose: each option is its own
component.
"""

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from rich.console import Console
from rich.table import Table

from src import registry

CONF = Path(__file__).resolve().parents[1] / "conf"


def presets(group: str) -> list[tuple[str, str]]:
    """(option, component) for every YAML file of ``group``, as Hydra composes it."""
    rows = []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for path in sorted((CONF / group).glob("*.yaml")):
            if group == "scenario":
                rows.append((path.stem, path.stem))
                continue
            node = compose("config", overrides=[f"{group}={path.stem}"])[group]
            rows.append((path.stem, node.name))
    return rows


def main(groups: list[str]) -> None:
    table = Table(
        title="Config groups: option (file) -> component (registry name)",
        caption="registered components without a preset can be chosen with <group>.name=",
    )
    for column in ("group", "option", "builds", "registered components"):
        table.add_column(column, no_wrap=column != "registered components")
    for group in groups or registry.GROUPS:
        rows = presets(group)
        registered = ", ".join(registry.names(group))
        for k, (option, component) in enumerate(rows):
            table.add_row(group if k == 0 else "", option, component, registered if k == 0 else "")
    Console().print(table)


if __name__ == "__main__":
    unknown = [g for g in sys.argv[1:] if g not in registry.GROUPS]
    if unknown:
        sys.exit(f"error: unknown group(s) {', '.join(unknown)}; groups: {', '.join(registry.GROUPS)}")
    main(sys.argv[1:])
