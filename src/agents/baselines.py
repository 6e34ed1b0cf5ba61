"""Baselines that share the agent interface: buy-and-hold, random and an SMA crossover."""

import numpy as np
import pandas as pd
import talib
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


class SmaCross(Agent):
    """Long while SMA(close, fast) > SMA(close, slow), flat otherwise: a fixed signal, so the
    backtester can be checked against other backtesters on the same trades.

    ``signals(df)`` returns one action per bar of ``df``, each from closes up to that bar; the
    backtester takes the action of the decision bar instead of calling ``act``."""

    name = "sma_cross"

    def __init__(self, actions: ActionSpace, fast: int, slow: int):
        if not 0 < fast < slow:
            raise ValueError(f"agent.fast={fast}, agent.slow={slow}: need 0 < fast < slow")
        self.actions, self.fast, self.slow = actions, fast, slow
        self._hold, self._flat = actions.longest(1).numpy(), actions.flat(1).numpy()  # one bar's actions

    def signals(self, df: pd.DataFrame) -> torch.Tensor:
        close = df["$close"].to_numpy(np.float64)
        long = talib.SMA(close, self.fast) > talib.SMA(close, self.slow)
        bars = long.reshape((len(df),) + (1,) * (self._hold.ndim - 1))  # broadcast over the bars
        return torch.from_numpy(np.where(bars, self._hold, self._flat))

    def act(self, market: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        raise TypeError("sma_cross trades on prices, not observations: use signals(df)")


@register("agent", "sma_cross")
def build_sma_cross(cfg, env, seed: int) -> SmaCross:
    return SmaCross(env.actions, cfg.fast, cfg.slow)


@register("agent", "buy_and_hold")
def build_buy_and_hold(cfg, env, seed: int) -> BuyAndHold:
    return BuyAndHold(env.actions)


@register("agent", "random")
def build_random(cfg, env, seed: int) -> RandomAgent:
    return RandomAgent(env.actions, cfg.seed)
