"""``MultiAgentTradingEnv``: E multi-agent markets as one batched TorchRL ``EnvBase``.

The learning agents form one group (``group_map = {"agents": [names]}``); fixed strategies
(``env.agents`` roles other than ``learner``) trade inside the env and are not seen by TorchRL.
Keys, with L learners: ``("agents", "observation")`` (E, L, window, F) float32 (the market's
window, the same for every agent), ``("agents", "account")`` (E, L, 3) float32 (own position
fraction, own log equity, last net order flow as a share of volume, 0 unless
``env.observe_flow``), ``("agents", "action")`` (E, L) discrete, ``("agents", "reward")``
(E, L, 1), ``("agents", "done"|"terminated"|"truncated")`` (E, L, 1) and the market's
``done``/``terminated``/``truncated`` (E, 1).
"""

import dataclasses

import pandas as pd
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from src.config_checks import ConfigError
from src.envs.fixed_agents import FixedStrategy, build_roles
from src.envs.multi_market import Impact, MultiMarket
from src.envs.torchrl_env import action_space, feature_columns, market_rules
from src.registry import register


class MultiAgentTradingEnv(EnvBase):
    """Batched multi-agent env over ``MultiMarket``; ``fixed`` maps agent slots to strategies."""

    def __init__(
        self,
        market: MultiMarket,
        actions,
        names: list[str],
        learners: list[int],
        fixed: dict[int, FixedStrategy],
        observe_flow: bool,
    ):
        super().__init__(batch_size=torch.Size([market.E]), device="cpu")
        if not actions.discrete:
            raise ConfigError("env=multi_agent supports env.action_space=discrete only")
        self.market, self.actions, self.names = market, actions, names
        self.learners, self.fixed, self.observe_flow = learners, fixed, observe_flow
        self._resume_state: dict | None = None
        self.group_map = {"agents": [names[k] for k in learners]}
        E, L, K = market.E, len(learners), market.K
        _, w, f = market.obs.shape
        self._learner_rows = torch.tensor([e * K + k for e in range(E) for k in learners])
        agents = {"shape": (E, L)}
        self.observation_spec = Composite(
            agents=Composite(
                observation=Unbounded((E, L, w, f), dtype=torch.float32),
                account=Unbounded((E, L, 3), dtype=torch.float32),
                **agents,
            ),
            shape=(E,),
        )
        self.action_spec = Composite(
            agents=Composite(action=Categorical(len(actions.levels), (E, L), dtype=torch.int64), **agents), shape=(E,)
        )
        self.reward_spec = Composite(
            agents=Composite(reward=Unbounded((E, L, 1), dtype=torch.float32), **agents), shape=(E,)
        )
        flag = {"n": 2, "dtype": torch.bool}
        self.done_spec = Composite(
            done=Categorical(shape=(E, 1), **flag),
            terminated=Categorical(shape=(E, 1), **flag),
            truncated=Categorical(shape=(E, 1), **flag),
            agents=Composite(
                done=Categorical(shape=(E, L, 1), **flag),
                terminated=Categorical(shape=(E, L, 1), **flag),
                truncated=Categorical(shape=(E, L, 1), **flag),
                **agents,
            ),
            shape=(E,),
        )

    def resume_state(self) -> dict:
        """The env's whole evolving state (a training checkpoint's): its markets' arrays and the
        fixed strategies' generators."""
        return {"market": self.market.state(), "fixed": {k: s.state() for k, s in self.fixed.items()}}

    def resume_from(self, state: dict) -> None:
        """The next full reset continues from ``state`` (``resume_state()``) instead of starting
        new episodes: a collector built on this env picks up where a checkpointed one stopped."""
        self._resume_state = state

    @property
    def num_learners(self) -> int:
        return len(self.learners)

    def observation(self) -> dict:
        E, L = self.market.E, self.num_learners
        window = torch.from_numpy(self.market.obs)
        account = torch.from_numpy(self.market.account)[self._learner_rows].reshape(E, L, 3)
        if not self.observe_flow:
            account[..., 2] = 0.0
        return {"observation": window.unsqueeze(1).expand(E, L, *window.shape[1:]).clone(), "account": account}

    def _flags(self, terminated: torch.Tensor, truncated: torch.Tensor) -> dict:
        E, L = self.market.E, self.num_learners
        done = terminated | truncated
        per_agent = {
            name: flag.reshape(E, 1, 1).expand(E, L, 1).clone()
            for name, flag in (("done", done), ("terminated", terminated), ("truncated", truncated))
        }
        return {
            "done": done.reshape(E, 1),
            "terminated": terminated.reshape(E, 1).clone(),
            "truncated": truncated.reshape(E, 1).clone(),
            "agents": per_agent,
        }

    def _output(self, flags: dict, agents: dict) -> TensorDict:
        E, L = self.market.E, self.num_learners
        group = TensorDict({**agents, **flags.pop("agents")}, batch_size=(E, L))
        return TensorDict({**flags, "agents": group}, batch_size=self.batch_size)

    def _reset(self, tensordict: TensorDictBase | None, **kwargs) -> TensorDictBase:
        mask = None
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict["_reset"].reshape(-1).numpy()
        if mask is None and self._resume_state is not None:
            self.market.load_state(self._resume_state["market"])
            for k, strategy in self.fixed.items():
                strategy.load_state(self._resume_state["fixed"][k])
            self._resume_state = None
        else:
            self.market.reset(mask)
        no = torch.zeros(self.market.E, dtype=torch.bool)
        flags = self._flags(no, no)
        return self._output(flags, self.observation())

    def targets(self, learner_actions: torch.Tensor) -> torch.Tensor:
        """(E*K,) float64 targets: the learners' actions (E, L) mapped, fixed strategies' own."""
        E, K = self.market.E, self.market.K
        out = torch.zeros(E, K, dtype=torch.float64)
        out[:, self.learners] = (
            torch.as_tensor(self.actions.to_targets(learner_actions.reshape(-1))).reshape(E, -1).to(torch.float64)
        )
        for k, strategy in self.fixed.items():
            out[:, k] = torch.as_tensor(strategy.targets(self.market, k), dtype=torch.float64)
        return out.reshape(-1)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        self.market.step(self.targets(tensordict["agents", "action"]).numpy())
        E, L = self.market.E, self.num_learners
        reward = torch.from_numpy(self.market.reward)[self._learner_rows].reshape(E, L, 1)
        flags = self._flags(
            torch.from_numpy(self.market.terminated.copy()), torch.from_numpy(self.market.truncated.copy())
        )
        return self._output(flags, {**self.observation(), "reward": reward})

    def _set_seed(self, seed: int | None) -> None:
        self.market.seed(0 if seed is None else seed)
        for strategy in self.fixed.values():
            strategy.seed(0 if seed is None else seed)


@register("env", "multi_agent")
def build_multi_agent_env(
    cfg, df: pd.DataFrame, seed: int, num_envs: int | None = None, risk=None
) -> MultiAgentTradingEnv:
    """E = ``num_envs or env.num_envs`` markets of the agents in ``env.agents`` (default
    ``env.num_agents`` learners) over ``df``, each agent starting with ``env.capital``. The
    ``backtest`` group's rules (``risk``) are not part of the multi-agent market: its costs are
    the env's fee and slippage plus the impact of the net flow."""
    names, learners, fixed = build_roles(cfg, df, seed)
    rules = dataclasses.replace(market_rules(cfg, None, df.index), capital=cfg.capital)
    market = MultiMarket(
        df,
        feature_columns(df),
        num_envs or cfg.num_envs,
        len(names),
        cfg.window_size,
        rules,
        Impact(cfg.impact.temporary, cfg.impact.permanent),
        seed=seed,
    )
    return MultiAgentTradingEnv(market, action_space(cfg), names, learners, fixed, cfg.observe_flow)
