"""Training checkpoints: a long run survives Ctrl-C, SIGTERM or a crash and resumes exactly.

A run's checkpoints live in ``<agent.training_checkpoints>/<run_name>-<fingerprint>/last.pt``,
where the fingerprint hashes every setting that changes what training computes (not how it is
shown or where it is logged), so rerunning the same command with ``agent.resume=true`` (or a sweep
trial rerun) finds its own checkpoint and nothing else. A checkpoint holds the iteration and
frames done, the policy, value net, optimiser and LR schedule, the best validation policy so far,
the env's whole state (including each env's RNG) and torch's RNG: resuming reaches the same final
result, bit for bit, as an uninterrupted run with the same seed (local collection).
"""

import copy
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from src.config_checks import plain_dict

# settings that do not change what training computes: excluded from the fingerprint
NOT_TRAINING = (
    "agent.resume",
    "agent.progress",
    "agent.checkpoint_every",
    "agent.checkpoint",
    "mlflow",
    "paper",
    "stress.scenarios",
    "evaluate_test",
    "mode",
    "backtest.plots",
    "feed",
    "broker",
    "hydra",
    "resources.ray.address",
    "seeds",
    "walk_forward",
)


def cpu_copy(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a state dict with its tensors on the CPU (checkpoints load on any machine)."""
    return {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v for k, v in state.items()}


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM; ``checkpoint`` is where it can resume from."""

    def __init__(self, checkpoint: Path | None):
        super().__init__(str(checkpoint))
        self.checkpoint = checkpoint


@dataclass
class TrainingProgress:
    iteration: int = 0  # PPO iterations completed
    frames: int = 0  # env frames collected


def fingerprint(cfg: DictConfig) -> str:
    """12 hex digits over the resolved config without the ``NOT_TRAINING`` settings."""
    plain = plain_dict(cfg)
    for dotted in NOT_TRAINING:
        *parents, leaf = dotted.split(".")
        node = plain
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(plain)).encode()).hexdigest()[:12]


def checkpoint_dir(cfg: DictConfig) -> Path:
    """This run's folder of training checkpoints."""
    return Path(cfg.agent.training_checkpoints) / f"{cfg.run_name}-{fingerprint(cfg)}"


class TrainingCheckpoints:
    """``last.pt`` in ``folder``, written atomically (a crash mid-write leaves the previous one);
    ``meta`` (e.g. the MLflow run id, so a resumed run continues the same MLflow run) is stored
    with every checkpoint."""

    def __init__(self, folder: Path, **meta: Any):
        self.path = Path(folder) / "last.pt"
        self.meta = meta

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        torch.save({**state, **self.meta}, partial)
        os.replace(partial, self.path)

    def resume(self, parts: "TrainingParts", progress: TrainingProgress) -> dict[str, Any] | None:
        """Load the last checkpoint into ``parts`` and ``progress`` (``restore_training``);
        returns it (its torch RNG is the caller's to restore), or None if there is none."""
        state = self.load()
        if state is not None:
            restore_training(state, parts, progress)
        return state

    def record(self, parts: "TrainingParts", progress: TrainingProgress, every: int) -> dict[str, Any]:
        """This iteration's ``training_state``, saved every ``every`` iterations; returned for
        ``interrupted`` to save if training stops before the next one."""
        snapshot = training_state(parts, progress)
        if progress.iteration % every == 0:
            self.save(snapshot)
        return snapshot

    def interrupted(self, snapshot: dict[str, Any] | None) -> "TrainingInterrupted":
        """What Ctrl-C or SIGTERM during training raises: the last finished iteration's
        ``snapshot`` saved (if any), and the checkpoint to resume from named."""
        if snapshot is not None:
            self.save(snapshot)
        return TrainingInterrupted(self.path if self.path.is_file() else None)

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint, or None if this run has none yet."""
        if not self.path.is_file():
            return None
        # the run's own checkpoint (its numpy env state needs full unpickling), never a download
        state: dict[str, Any] = torch.load(self.path, weights_only=False, map_location="cpu")  # nosec B614
        return state


@dataclass
class TrainingParts:
    """What a training loop evolves besides its progress: the ``agent`` (its actor and critic),
    ``optimizer``, LR ``schedule``, ``best`` validation policy (``_BestPolicy``), the replay
    ``buffer`` (its sampler) and the ``env`` (its ``resume_state()``)."""

    agent: Any
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    best: Any
    buffer: Any
    env: Any


def training_state(parts: TrainingParts, progress: TrainingProgress) -> dict[str, Any]:
    """Everything training needs to continue exactly from the end of this iteration: the
    ``parts``' state, the progress and torch's RNG."""
    best = parts.best
    return {
        "iteration": progress.iteration,
        "frames": progress.frames,
        "actor": cpu_copy(parts.agent.actor.state_dict()),
        "critic": cpu_copy(parts.agent.critic.state_dict()),
        "optimizer": copy.deepcopy(parts.optimizer.state_dict()),
        "schedule": parts.schedule.state_dict(),
        "best": {"score": best.score, "iteration": best.iteration, "stale": best.stale, "state": best.state},
        "sampler": copy.deepcopy(parts.buffer.sampler.state_dict()),  # holds the next permutation
        "env": parts.env.resume_state(),
        "torch_rng": torch.get_rng_state(),
    }


def restore_training(state: dict[str, Any], parts: TrainingParts, progress: TrainingProgress) -> None:
    """Load a ``training_state`` into freshly built training ``parts`` and ``progress`` (the env
    continues at the next reset, which the collector makes when it is built; torch's RNG is the
    caller's to restore, once the collector is built)."""
    progress.iteration, progress.frames = state["iteration"], state["frames"]
    parts.agent.actor.load_state_dict(state["actor"])
    parts.agent.critic.load_state_dict(state["critic"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.schedule.load_state_dict(state["schedule"])
    saved, best = state["best"], parts.best
    best.score, best.iteration, best.stale, best.state = (
        saved["score"],
        saved["iteration"],
        saved["stale"],
        saved["state"],
    )
    parts.buffer.sampler.load_state_dict(state["sampler"])
    parts.env.resume_from(state["env"])
    print(f"resuming training at iteration {progress.iteration} ({progress.frames:,} frames)", file=sys.stderr)
