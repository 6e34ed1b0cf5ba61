"""The one interface every agent shares: fit, act, save, load."""

from collections.abc import Callable
from pathlib import Path

import torch

MetricLogger = Callable[[dict[str, float], int], None]  # (metrics, step) -> None


class Agent:
    """Maps observations to actions of the env's ``ActionSpace`` (src/envs/actions.py).

    ``act`` takes ``market`` (N, window_size, n_features) and ``account`` (N, 2) float32 tensors
    and returns N actions; it must not look at anything else.
    """

    name = "agent"
    frames_trained = 0  # env frames learned from (the MLflow step of end-of-training metrics)

    def fit(self, train_env, log: MetricLogger, evaluate=None, compute=None, checkpoints=None) -> None:
        """Learn from ``train_env`` (a batched TradingEnv); ``evaluate(agent)`` returns validation
        metrics for model selection; ``compute`` (src/resources.py) says where, ``checkpoints``
        (src/agents/resume.py) where training state is saved. Baselines learn nothing."""

    def act(self, market: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def save(self, path: Path, contract: dict) -> Path | None:
        """Write a checkpoint to ``path`` with the policy's ``contract``
        (src/agents/checkpoint.py); returns it, or None for agents without parameters."""
        return None

    def load(self, path: Path, contract: dict, check: bool = True) -> None:
        """Load ``path``; fails unless its stored contract equals ``contract`` (``check``)."""
        raise ValueError(f"agent {self.name!r} has no parameters to load from {path}")
