"""Action spaces: what an agent's action means as a target position (fraction of equity)."""

import numpy as np
import torch
from torchrl.data import Bounded, Categorical, TensorSpec


class ActionSpace:
    """``discrete``: an index into ``levels`` — (flat, long) or (short, flat, long) x leverage.
    ``continuous``: the target itself, shape (N, 1), in [low, high] = [-L or 0, L]."""

    def __init__(self, kind: str, allow_short: bool, max_leverage: float):
        if kind not in ("discrete", "continuous"):
            raise ValueError(f"env.action_space={kind!r}; valid: discrete, continuous")
        if max_leverage <= 0:
            raise ValueError(f"env.max_leverage={max_leverage} must be > 0")
        self.kind = kind
        self.low, self.high = (-max_leverage if allow_short else 0.0), max_leverage
        levels = [-1.0, 0.0, 1.0] if allow_short else [0.0, 1.0]
        self.levels = torch.tensor(levels, dtype=torch.float64) * max_leverage
        self._level_targets = self.levels.numpy()  # the same values, indexed by numpy (faster per step)

    @property
    def discrete(self) -> bool:
        return self.kind == "discrete"

    def spec(self, num_envs: int) -> TensorSpec:
        if self.discrete:
            return Categorical(len(self.levels), shape=(num_envs,), dtype=torch.int64)
        return Bounded(self.low, self.high, shape=(num_envs, 1), dtype=torch.float32)

    def to_targets(self, action: torch.Tensor) -> np.ndarray:
        """(N,) float64 target fractions for the kernel."""
        if self.discrete:
            return self._level_targets.take(action.numpy())
        return action.reshape(-1).to(torch.float64).clamp(self.low, self.high).numpy()

    def longest(self, num_envs: int) -> torch.Tensor:
        """The action that holds the largest long position, for every env."""
        if self.discrete:
            return torch.full((num_envs,), len(self.levels) - 1, dtype=torch.int64)
        return torch.full((num_envs, 1), self.high, dtype=torch.float32)

    def flat(self, num_envs: int) -> torch.Tensor:
        """The action that holds no position, for every env."""
        if self.discrete:
            return torch.full((num_envs,), int(torch.nonzero(self.levels == 0)[0, 0]), dtype=torch.int64)
        return torch.zeros((num_envs, 1), dtype=torch.float32)

    def sample(self, num_envs: int, generator: torch.Generator) -> torch.Tensor:
        """Uniformly random actions."""
        if self.discrete:
            return torch.randint(len(self.levels), (num_envs,), generator=generator)
        uniform = torch.rand((num_envs, 1), generator=generator)
        return self.low + (self.high - self.low) * uniform
