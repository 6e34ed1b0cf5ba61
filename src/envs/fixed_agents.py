"""The agents of a multi-agent market (``env.agents``): learners and fixed strategies.

``env.agents`` is a list of ``{name, role, ...}``; roles: ``learner`` (trained by mappo/ippo),
``buy_and_hold``, ``random``, ``sma_cross`` (with ``fast``, ``slow``) and ``checkpoint`` (a saved
single-agent PPO policy: ``path``, plus any ``conf/agent/ppo.yaml`` setting it was trained with,
e.g. ``hidden_sizes``). Null: ``env.num_agents`` learners named ``agent_0`` .. ``agent_{K-1}``.
A fixed strategy decides at each market's bar t from bars up to t, like any agent.
"""

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from src.config_checks import ConfigError
from src.envs.torchrl_env import action_space

ROLES = ("learner", "buy_and_hold", "random", "sma_cross", "checkpoint")
PPO_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "agent" / "ppo.yaml"


class FixedStrategy:
    """A non-learning agent: ``targets(market, k)`` gives slot k's (E,) targets at this bar."""

    def targets(self, market, k: int) -> np.ndarray:
        raise NotImplementedError

    def seed(self, seed: int) -> None:
        """Strategies with randomness reseed here."""

    def state(self) -> Any:
        """What evolves in the strategy (its generator's state), for a training checkpoint."""
        return None

    def load_state(self, state: Any) -> None:
        """Continue from ``state()``."""


class Hold(FixedStrategy):
    def __init__(self, actions):
        self.long = float(actions.to_targets(actions.longest(1))[0])

    def targets(self, market, k):
        return np.full(market.E, self.long)


class Random(FixedStrategy):
    def __init__(self, actions, seed: int):
        self.actions, self.generator = actions, torch.Generator().manual_seed(seed)

    def seed(self, seed):
        self.generator.manual_seed(seed)

    def state(self):
        return self.generator.get_state()

    def load_state(self, state):
        self.generator.set_state(state)

    def targets(self, market, k):
        return self.actions.to_targets(self.actions.sample(market.E, self.generator))


class Crossover(FixedStrategy):
    """``sma_cross`` on the exogenous closes: the target decided at each bar, looked up by t."""

    def __init__(self, actions, df: pd.DataFrame, fast: int, slow: int):
        from src.agents.baselines import SmaCross  # agents build on envs, not the other way

        self.by_bar = np.asarray(
            actions.to_targets(SmaCross(actions, fast, slow).signals(df)), dtype=np.float64
        ).reshape(-1)

    def targets(self, market, k):
        return self.by_bar[market.t]


class SavedPolicy(FixedStrategy):
    """A single-agent PPO checkpoint acting on the market window and its own account."""

    def __init__(self, cfg_env, df: pd.DataFrame, entry):
        from src import registry

        path = Path(entry.path)
        if not path.is_file():
            raise FileNotFoundError(f"env.agents: {entry.name}: checkpoint {path} does not exist")
        agent_cfg = OmegaConf.merge(
            OmegaConf.load(PPO_CONFIG), {k: v for k, v in entry.items() if k not in ("name", "role", "path")}
        )
        single = OmegaConf.merge(cfg_env, {"name": "vectorized"})
        env = registry.build("env", single, df, seed=0, num_envs=1)
        self.agent = registry.build("agent", agent_cfg, env, seed=0)
        state = torch.load(path, weights_only=True)
        try:
            self.agent.actor.load_state_dict(state["actor"])
        except RuntimeError as error:
            raise ConfigError(
                f"env.agents: {entry.name}: {path} does not fit this market's window, "
                f"features or network settings: {str(error).splitlines()[0]}"
            ) from None
        self.actions = env.actions

    def targets(self, market, k):
        rows = np.arange(market.E) * market.K + k
        account = torch.from_numpy(market.account[rows, :2])
        return self.actions.to_targets(self.agent.act(torch.from_numpy(market.obs), account))


def build_roles(cfg, df: pd.DataFrame, seed: int) -> tuple[list[str], list[int], dict[int, FixedStrategy]]:
    """(agent names, learner slots, {slot: fixed strategy}) from ``env.agents``."""
    actions = action_space(cfg)
    entries = cfg.agents or [{"name": f"agent_{k}", "role": "learner"} for k in range(cfg.num_agents)]
    names: list[str] = []
    learners: list[int] = []
    fixed: dict[int, FixedStrategy] = {}
    for k, entry in enumerate(OmegaConf.create(list(entries))):
        role = entry.get("role", "learner")
        name = entry.get("name") or f"agent_{k}"
        if role not in ROLES:
            raise ConfigError(f"env.agents[{k}].role={role!r}; valid: {', '.join(ROLES)}")
        if name in names:
            raise ConfigError(f"env.agents[{k}].name={name!r} is used twice; names must be unique")
        names.append(name)
        if role == "learner":
            learners.append(k)
        elif role == "buy_and_hold":
            fixed[k] = Hold(actions)
        elif role == "random":
            fixed[k] = Random(actions, seed + k)
        elif role == "sma_cross":
            fixed[k] = Crossover(actions, df, entry.get("fast", 10), entry.get("slow", 50))
        else:
            fixed[k] = SavedPolicy(cfg, df, OmegaConf.merge({"name": name}, entry))
    if not learners:
        raise ConfigError("env.agents has no learner: at least one agent needs role: learner")
    return names, learners, fixed
