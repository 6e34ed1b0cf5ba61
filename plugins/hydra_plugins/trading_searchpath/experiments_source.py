"""Expose the project's top-level ``experiments/`` folder as Hydra's ``experiment`` group.

Hydra finds a group ``G`` as a sub-folder ``G/`` of a search-path root. Our experiments live in
``experiments/*.yaml`` (not ``conf/experiment/``), so this config source presents a virtual root
whose only group, ``experiment``, is that folder: ``experiment=NAME`` loads ``experiments/NAME.yaml``.
"""

import os

from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigResult, ConfigSource

GROUP = "experiment"


def _inner(config_path: str) -> str | None:
    """Path inside the experiments folder, or None when ``config_path`` is outside the group."""
    if config_path == GROUP:
        return ""
    if config_path.startswith(GROUP + "/"):
        return config_path[len(GROUP) + 1 :]
    return None


class ExperimentsConfigSource(ConfigSource):
    def __init__(self, provider: str, path: str) -> None:
        super().__init__(provider=provider, path=path)
        self._files = FileConfigSource(provider=provider, path=self.path)

    @staticmethod
    def scheme() -> str:
        return "experiments"

    def load_config(self, config_path: str) -> ConfigResult:
        result = self._files.load_config(_inner(config_path) or config_path)
        result.path = f"{self.scheme()}://{self.path}"
        return result

    def available(self) -> bool:
        return os.path.isdir(self.path)

    def is_group(self, config_path: str) -> bool:
        if config_path == "":
            return True
        inner = _inner(config_path)
        return inner is not None and self._files.is_group(inner)

    def is_config(self, config_path: str) -> bool:
        inner = _inner(config_path)
        return inner is not None and inner != "" and self._files.is_config(inner)

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        if config_path == "":
            return [GROUP] if results_filter in (None, ObjectType.GROUP) else []
        inner = _inner(config_path)
        return [] if inner is None else self._files.list(inner, results_filter)
