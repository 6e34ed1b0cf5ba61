"""Baselines that share the agent interface: buy-and-hold and random."""
import torch

from src.agents.base import Agent
from src.registry import register


class BuyAndHold(Agent):
    """Always the largest target position (the last level): long from the first bar on."""

    name = "buy_and_hold"

    def __init__(self, n_actions: int):
        self.long = n_actions - 1

    def act(self, market: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        return torch.full((market.shape[0],), self.long, dtype=torch.int64)


class RandomAgent(Agent):
    """A uniformly random action every bar from its own seeded generator."""

    name = "random"

    def __init__(self, n_actions: int, seed: int):
        self.n_actions = n_actions
        self.generator = torch.Generator().manual_seed(seed)

    def act(self, market: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        return torch.randint(self.n_actions, (market.shape[0],), generator=self.generator)


@register("agent", "buy_and_hold")
def build_buy_and_hold(cfg, env, seed: int) -> BuyAndHold:
    return BuyAndHold(env.action_spec.space.n)


@register("agent", "random")
def build_random(cfg, env, seed: int) -> RandomAgent:
    return RandomAgent(env.action_spec.space.n, cfg.seed)
