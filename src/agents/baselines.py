"""Baselines that share the agent interface: buy-and-hold and random."""
import torch

from src.agents.base import Agent
from src.envs.actions import ActionSpace
from src.registry import register


class BuyAndHold(Agent):
    """Always the largest long target: long from the first bar on."""

    name = "buy_and_hold"

    def __init__(self, actions: ActionSpace):
        self.actions = actions

    def act(self, market: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        return self.actions.longest(market.shape[0])


class RandomAgent(Agent):
    """A uniformly random action every bar from its own seeded generator."""

    name = "random"

    def __init__(self, actions: ActionSpace, seed: int):
        self.actions = actions
        self.generator = torch.Generator().manual_seed(seed)

    def act(self, market: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        return self.actions.sample(market.shape[0], self.generator)


@register("agent", "buy_and_hold")
def build_buy_and_hold(cfg, env, seed: int) -> BuyAndHold:
    return BuyAndHold(env.actions)


@register("agent", "random")
def build_random(cfg, env, seed: int) -> RandomAgent:
    return RandomAgent(env.actions, cfg.seed)
