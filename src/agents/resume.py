"""Training checkpoints: a long run survives Ctrl-C, SIGTERM or a crash and resumes exactly.

A run's checkpoints live in ``<agent.training_checkpoints>/<run_name>-<fingerprint>/last.pt``,
where the fingerprint hashes every setting that changes what training computes (not how it is
shown or where it is logged), so rerunning the same command with ``agent.resume=true`` (or a sweep
trial rerun) finds its own checkpoint and nothing else. A checkpoint holds the iteration and
frames done, the policy, value net, optimiser and LR schedule, the best validation policy so far,
the env's whole state (including each env's RNG) and torch's RNG: resuming reaches the same final
result, bit for bit, as an uninterrupted run with the same seed (local collection).
"""

import hashlib
import os
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

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint, or None if this run has none yet."""
        if not self.path.is_file():
            return None
        # the run's own checkpoint (its numpy env state needs full unpickling), never a download
        state: dict[str, Any] = torch.load(self.path, weights_only=False, map_location="cpu")  # nosec B614
        return state
