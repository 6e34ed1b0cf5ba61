"""Compute resources of one run (the ``resources`` config group): threads, device, Ray workers.

``num_threads`` is the one setting of a run's threads: torch's intra-op threads and numba's
parallel threads (the kernel's ``prange`` over envs) both follow it, and a sweep trial reserves
that many CPUs and runs with it (``hydra.sweeper.cpus_per_trial`` overrides it for the trials).
``device`` is where the learner runs (policy, value net, GAE, PPO updates); the env is always the
CPU numba kernel. ``resources=ray`` collects experience on Ray workers (src/agents/collection.py).
"""

from dataclasses import dataclass

import numba
import torch
from omegaconf import DictConfig

from src.config_checks import ConfigError
from src.registry import register

MAX_THREADS: int = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]  # set at import from the cores


@dataclass(frozen=True)
class Compute:
    """What a run's training uses: ``device`` of the learner, ``num_threads`` per process, and
    ``ray`` (the ``resources.ray`` settings) when collection runs on Ray workers, else None."""

    device: torch.device
    num_threads: int
    ray: DictConfig | None = None
    pin_memory: bool = True  # a CUDA learner: the env hands out its outputs in pinned host memory

    @property
    def label(self) -> str:
        where = f"ray x{self.ray.num_workers}" if self.ray is not None else "local"
        return f"{self.device.type}, {self.num_threads} thread(s), {where}"


def apply_threads(cfg: DictConfig) -> int:
    """Pin torch's and numba's threads to ``num_threads`` (null: every core numba sees)."""
    threads = int(cfg.num_threads or MAX_THREADS)
    if threads > MAX_THREADS:
        raise ConfigError(
            f"resources.num_threads={threads} is out of range; valid: an integer in "
            f"[1, {MAX_THREADS}] (the cores of this machine)"
        )
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    return threads


def learner_device(name: str) -> torch.device:
    """``resources.device`` as a torch device; a CUDA device on a machine without one is an error."""
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"resources.device={name!r}; valid: cpu, cuda, cuda:<index>")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"resources.device={name!r} but torch sees no CUDA GPU on this machine "
            "(torch.cuda.is_available() is False); use resources=local"
        )
    return torch.device(name)


@register("resources", "local")
def build_local(cfg: DictConfig) -> Compute:
    """Everything in this process: the kernel on ``num_threads`` cores, the learner on ``device``."""
    return Compute(learner_device(cfg.device), apply_threads(cfg), pin_memory=cfg.pin_memory)


@register("resources", "ray")
def build_ray(cfg: DictConfig) -> Compute:
    """Collection on ``resources.ray.num_workers`` Ray workers, the learner here on ``device``."""
    ray = cfg.ray
    if not ray.min_workers <= ray.num_workers <= ray.max_workers:
        raise ConfigError(
            f"resources.ray.num_workers={ray.num_workers} must lie in "
            f"[min_workers={ray.min_workers}, max_workers={ray.max_workers}]"
        )
    return Compute(learner_device(cfg.device), apply_threads(cfg), ray, cfg.pin_memory)
