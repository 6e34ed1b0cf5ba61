"""Experience collection for PPO: TorchRL's ``Collector`` in this process, or its Ray-based
``RayCollector`` (``resources=ray``) with each worker stepping its own numba env batch.

Both yield batches of shape (num_envs, steps) on the learner's device, so the learner does not
know where the frames came from. On Ray, ``env.num_envs`` envs are split evenly over the workers
(worker k's envs are seeded from ``seed`` and k through the collector's seed chain), and
``WorkerScaler`` changes the worker count between iterations while throughput rises.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector

from src.resources import Compute


def local_collector(env, policy, frames_per_batch: int, total_frames: int, compute: Compute) -> Collector:
    """One collector over ``env`` here: the env on the CPU, the policy and the frames on the
    learner's device (TorchRL moves each step's observation once, from pinned host memory when
    the learner is on a GPU and ``resources.pin_memory`` is on)."""
    env.pin_memory = compute.device.type == "cuda" and compute.pin_memory
    return Collector(
        env,
        policy,
        frames_per_batch=frames_per_batch,
        total_frames=total_frames,
        env_device="cpu",
        policy_device=compute.device,
        storing_device=compute.device,
        auto_register_policy_transforms=False,
    )


def worker_counts(num_envs: int, low: int, high: int) -> list[int]:
    """Worker counts in [low, high] that split ``num_envs`` envs evenly."""
    counts = [w for w in range(low, high + 1) if num_envs % w == 0]
    if not counts:
        raise ValueError(
            f"env.num_envs={num_envs} cannot be split evenly over {low}..{high} Ray "
            "workers; choose a num_envs divisible by resources.ray.num_workers"
        )
    return counts


def worker_bundle(settings) -> dict[str, int | float]:
    """The Ray resources one collection worker asks for (``resources.ray`` ``settings``): one CPU
    and ``worker_memory_gb`` of memory, also the shape of its bundle in a trial's placement group."""
    return {"CPU": 1, "memory": int(settings.worker_memory_gb * 1024**3)}


class RayCollection:
    """Batches from ``workers`` Ray actors, each a TorchRL ``Collector`` over ``num_envs / workers``
    envs built by ``env_recipe(seed=..., num_envs=...)`` (a picklable factory). ``restart(w)``
    replaces the actors by ``w`` fresh ones (their envs start new episodes)."""

    def __init__(
        self, env_recipe, policy, frames_per_batch: int, total_frames: int, compute: Compute, num_envs: int, seed: int
    ):
        if compute.ray is None:
            raise ValueError("RayCollection needs resources.ray settings (resources=ray)")
        self.recipe, self.policy, self.compute, self.settings = env_recipe, policy, compute, compute.ray
        self.frames_per_batch, self.frames_left, self.num_envs, self.seed = (
            frames_per_batch,
            total_frames,
            num_envs,
            seed,
        )
        self.collector: Any = None  # a torchrl RayCollector (imported with Ray, when first used)
        self.workers = 0
        self.scaler: WorkerScaler | None = None  # set when resources.ray.autoscale
        self.restart(self.settings.num_workers)

    def restart(self, workers: int) -> None:
        from torchrl.collectors.distributed import RayCollector

        self.shutdown()
        settings = self.settings
        init: dict[str, Any] = (
            {"address": settings.address}
            if settings.address
            else {"num_cpus": settings.max_workers + 1, "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        )
        init["log_to_driver"] = False  # workers' own logs stay in Ray's session folder
        per_worker, bundle = self.num_envs // workers, worker_bundle(settings)
        self.collector = RayCollector(
            [_EnvMaker(self.recipe, self.seed * 1000 + k, per_worker) for k in range(workers)],
            self.policy,
            frames_per_batch=self.frames_per_batch,
            total_frames=self.frames_left,
            sync=True,
            num_collectors=workers,
            ray_init_config=init,
            remote_configs={"num_cpus": bundle["CPU"], "num_gpus": 0, "memory": bundle["memory"]},
            collector_kwargs={
                "env_device": "cpu",
                "policy_device": "cpu",
                "storing_device": "cpu",
                "auto_register_policy_transforms": False,
            },
        )
        self.collector.set_seed(self.seed)
        self.collector.update_policy_weights_(self.policy)
        self.batches = iter(self.collector)
        self.workers = workers

    def free_cpus(self) -> float:
        """CPUs more workers could have now: inside a Ray Tune trial, the ``max_workers`` its
        placement group reserved; elsewhere the cluster's free CPUs plus this collection's own."""
        import ray

        if ray.get_runtime_context().get_placement_group_id() is not None:
            return float(self.settings.max_workers)
        return ray.available_resources().get("CPU", 0.0) + self.workers

    def __iter__(self) -> Iterator[TensorDictBase]:
        while self.frames_left > 0:
            batch = next(self.batches)
            self.frames_left -= batch.numel()
            # (workers, envs per worker, steps) -> (num_envs, steps) on the learner's device
            yield batch.reshape(-1, batch.shape[-1]).to(self.compute.device)

    def update_policy_weights_(self) -> None:
        self.collector.update_policy_weights_(self.policy)

    def shutdown(self) -> None:
        if self.collector is not None:
            self.collector.shutdown()
            self.collector = None


@dataclass
class _EnvMaker:
    """Picklable: builds one worker's env batch (``num_envs`` envs) on the worker and seeds the
    worker's torch generator (the policy's action sampling there) with ``seed``."""

    recipe: object
    seed: int
    num_envs: int

    def __call__(self):
        torch.manual_seed(self.seed)
        return self.recipe(seed=self.seed, num_envs=self.num_envs)


@dataclass
class WorkerScaler:
    """Decides the Ray worker count from measured frames/s.

    Every ``every`` iterations the mean frames/s at the current count is compared: after adding
    workers, a rise above ``threshold`` (relative) adds more, anything less goes back and marks
    the count tried as the ceiling; at an unchanged count, a fall beyond ``threshold`` from the
    count's own earlier mean (trials competing for the machine) removes workers, and if fewer
    workers then give less still (beyond ``threshold``: the fall was not theirs to fix) the
    count goes back up at once instead of waiting for a reprobe. A count held
    for ``reprobe_every`` iterations (0 = never) below the largest allowed one is probed upwards
    again, the ceiling forgotten: the machine may have freed up since. ``allowed``: the counts
    that split the envs evenly, ascending."""

    workers: int
    allowed: list[int]
    threshold: float
    every: int
    reprobe_every: int = 0
    samples: list[float] = field(default_factory=list)
    measured: dict[int, float] = field(default_factory=dict)
    ceiling: int | None = None
    last_change: tuple[int, float] | None = None  # (count before, its frames/s) after a change
    held: int = 0  # iterations at the current count since the last change

    def observe(self, frames_per_second: float) -> tuple[int, str] | None:
        """Record one iteration's frames/s; returns (new worker count, reason) or None."""
        self.samples.append(frames_per_second)
        if len(self.samples) < self.every:
            return None
        rate, self.samples = sum(self.samples) / len(self.samples), []
        count, earlier = self.workers, self.measured.get(self.workers)
        self.measured[count] = rate
        self.held += self.every
        change, self.last_change = self.last_change, None
        up, down = self._neighbour(+1), self._neighbour(-1)
        if change is not None:
            before, before_rate = change
            gain = rate / before_rate - 1.0
            if before < count and gain > self.threshold:
                return (
                    self._move(up, f"{before} -> {count} workers raised frames/s by {gain:+.0%}; adding more")
                    if up
                    else None
                )
            if before < count:
                self.ceiling = count
                why = f"not a rise above {self.threshold:.0%}"
            elif gain < -self.threshold:
                why = f"a fall beyond {self.threshold:.0%}"
            else:
                return None  # after removing workers, no worse: hold
            return self._move(
                before, f"{before} -> {count} workers changed frames/s by {gain:+.0%} ({why}); back to {before}"
            )
        if earlier is not None and rate < earlier * (1.0 - self.threshold) and down:
            return self._move(
                down,
                f"frames/s at {count} workers fell {rate / earlier - 1:+.0%} "
                f"({earlier:,.0f} -> {rate:,.0f}); removing workers",
            )
        if earlier is None and up:
            return self._move(up, f"{count} workers give {rate:,.0f} frames/s; trying {up}")
        if self.reprobe_every and self.held >= self.reprobe_every and count < self.allowed[-1]:
            self.ceiling = None
            again = self.allowed[self.allowed.index(count) + 1]
            return self._move(
                again, f"held {count} workers for {self.held} iterations ({rate:,.0f} frames/s); probing {again} again"
            )
        return None

    def _neighbour(self, direction: int) -> int | None:
        i = self.allowed.index(self.workers) + direction
        if not 0 <= i < len(self.allowed):
            return None
        candidate = self.allowed[i]
        if direction > 0 and self.ceiling is not None and candidate >= self.ceiling:
            return None
        return candidate

    def _move(self, workers: int, reason: str) -> tuple[int, str]:
        self.last_change = (self.workers, self.measured[self.workers])
        self.workers, self.held = workers, 0
        return workers, reason
