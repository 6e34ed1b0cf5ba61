"""Compute resources of one run (the ``resources`` config group).

``num_threads`` is the one setting of a run's threads: torch's intra-op threads and numba's
parallel threads both follow it, and a sweep trial reserves that many CPUs and runs with it
(``hydra.sweeper.cpus_per_trial`` overrides it for the trials).
"""
import numba
import torch

from src.config_checks import ConfigError
from src.registry import register


@register("resources", "local")
def apply_local(cfg) -> None:
    """Pin torch's and numba's threads to ``num_threads`` (null: every core numba sees)."""
    if cfg.device != "cpu":
        raise ConfigError(f"resources.device={cfg.device!r}: only 'cpu' is supported by resources=local")
    threads = int(cfg.num_threads or numba.config.NUMBA_NUM_THREADS)
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise ConfigError(f"resources.num_threads={threads} is out of range; valid: an integer in "
                          f"[1, {numba.config.NUMBA_NUM_THREADS}] (the cores of this machine)")
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
