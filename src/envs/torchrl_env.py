"""``TradingEnv``: N kernel envs as one batched TorchRL ``EnvBase`` (batch_size=[N]).

Observation keys: ``market`` (N, window_size, n_features) float32 and ``account`` (N, 2) float32
(position as a fraction of equity, log equity). ``action``: see ``src/envs/actions.py``. The kernel
writes each step's observations straight into a new tensor that is handed to TorchRL (no copy;
the kernel never writes into it again), in page-locked (pinned) host memory when ``pin_memory``
is set (a GPU learner), so the collector's move to the GPU is one asynchronous DMA copy. The
small outputs (account, reward, done flags) are copied from the kernel's buffers.
Finished envs are reset by TorchRL's partial ``_reset`` mask, which the numba reset kernel applies.
"""

import functools
from collections.abc import Callable

import pandas as pd
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from src.data.timeframes import periods_per_year
from src.data.validate import OHLCV
from src.envs.actions import ActionSpace
from src.envs.allocator import keep_freed_memory
from src.envs.market import MarketRules, VectorMarket
from src.registry import register

keep_freed_memory()  # every step hands out a fresh observation tensor (see src/envs/allocator.py)


def feature_columns(df: pd.DataFrame) -> list[str]:
    """The observation columns of ``df``: every $-column that is not raw OHLCV."""
    return [c for c in df.columns if c.startswith("$") and c not in OHLCV]


class TradingEnv(EnvBase):
    """Batched TorchRL env over ``VectorMarket``; resets only the envs TorchRL asks to reset."""

    def __init__(self, market: VectorMarket, actions: ActionSpace):
        super().__init__(batch_size=torch.Size([market.num_envs]), device="cpu")
        self.market, self.actions = market, actions
        # (seed=, num_envs=) -> a TradingEnv like this one (Ray workers build theirs)
        self.recipe: Callable[..., TradingEnv] | None = None
        self._resume_state: dict | None = None
        self.pin_memory = False  # set by a CUDA learner (needs CUDA)
        n, w, f = market.obs.shape
        self._account = torch.from_numpy(market.account)
        self._reward = torch.from_numpy(market.reward)
        self._terminated = torch.from_numpy(market.terminated)
        self._truncated = torch.from_numpy(market.truncated)
        self.observation_spec = Composite(
            market=Unbounded((n, w, f), dtype=torch.float32),
            account=Unbounded((n, 2), dtype=torch.float32),
            shape=(n,),
        )
        self.action_spec = actions.spec(n)
        self.reward_spec = Unbounded((n, 1), dtype=torch.float32)
        self.done_spec = Composite(
            done=Categorical(2, (n, 1), dtype=torch.bool),
            terminated=Categorical(2, (n, 1), dtype=torch.bool),
            truncated=Categorical(2, (n, 1), dtype=torch.bool),
            shape=(n,),
        )

    def _copy(self, tensor: torch.Tensor) -> torch.Tensor:
        """The copy of a kernel buffer handed to TorchRL (the kernel overwrites its buffers)."""
        return tensor.pin_memory() if self.pin_memory else tensor.clone()

    def _fresh_obs(self, copy_current: bool) -> torch.Tensor:
        """A new observation tensor that the kernel writes into from now on (starting as a copy
        of the current observations when some envs will not be rewritten)."""
        obs = torch.empty(self.market.obs.shape, dtype=torch.float32, pin_memory=self.pin_memory)
        if copy_current:
            obs.copy_(torch.from_numpy(self.market.obs))
        self.market.use_obs_buffer(obs.numpy())
        return obs

    def _observation(self, obs: torch.Tensor) -> dict:
        return {"market": obs, "account": self._copy(self._account)}

    def resume_from(self, state: dict) -> None:
        """The next full reset continues from ``state`` (``market.state()`` of a checkpoint)
        instead of starting new episodes: a collector built on this env picks up where a
        checkpointed one stopped."""
        self._resume_state = state

    def _reset(self, tensordict: TensorDictBase | None, **kwargs) -> TensorDictBase:
        mask = None
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict["_reset"].reshape(-1).numpy()
        obs = self._fresh_obs(copy_current=mask is not None and not mask.all())
        if mask is None and self._resume_state is not None:
            self.market.load_state(self._resume_state)
            self._resume_state = None
        else:
            self.market.reset(mask)
        done = torch.zeros(self.batch_size + (1,), dtype=torch.bool)
        return TensorDict(
            {**self._observation(obs), "done": done, "terminated": done.clone(), "truncated": done.clone()},
            batch_size=self.batch_size,
            device=self.device,  # already on the env's device: TorchRL does not convert it again
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = self._fresh_obs(copy_current=False)  # the kernel writes every env's window
        self.market.step(self.actions.to_targets(tensordict["action"]))
        terminated = self._copy(self._terminated.unsqueeze(-1))
        truncated = self._copy(self._truncated.unsqueeze(-1))
        return TensorDict(
            {
                **self._observation(obs),
                "reward": self._copy(self._reward.unsqueeze(-1)),
                "done": terminated | truncated,
                "terminated": terminated,
                "truncated": truncated,
            },
            batch_size=self.batch_size,
            device=self.device,  # already on the env's device: TorchRL does not convert it again
        )

    def _set_seed(self, seed: int | None) -> None:
        self.market.seed(0 if seed is None else seed)


def market_rules(cfg, risk=None, index: pd.DatetimeIndex | None = None) -> MarketRules:
    """The kernel's rules from the ``env`` config group, plus the ``backtest`` group's execution
    and risk rules when ``risk`` is given (annual financing rates need the bars' ``index``)."""
    rules = dict(
        transaction_fee=cfg.transaction_fee,
        slippage_bps=cfg.slippage_bps,
        episode_length=cfg.episode_length,
        equity_floor=cfg.equity_floor,
        rebalance_threshold=cfg.rebalance_threshold,
        reward=cfg.reward,
        reward_param=cfg.reward_param,
        max_leverage=cfg.max_leverage,
    )
    if risk is not None:
        periods = risk.periods_per_year or periods_per_year(index)
        rules.update(
            impact=risk.execution.impact,
            max_participation=risk.execution.max_participation,
            carry_unfilled=risk.execution.carry_unfilled,
            stop_loss=risk.stops.stop_loss,
            take_profit=risk.stops.take_profit,
            trailing_stop=risk.stops.trailing_stop,
            borrow_per_bar=risk.financing.borrow_rate / periods,
            funding_per_bar=risk.financing.funding_rate / periods,
            drawdown_limit=risk.breaker.drawdown_limit,
            pause_bars=risk.breaker.pause_bars,
            capital=risk.initial_cash,
            reenter=risk.stops.reenter,
        )
    return MarketRules(**rules)


def action_space(cfg) -> ActionSpace:
    return ActionSpace(cfg.action_space, cfg.allow_short, cfg.max_leverage)


@register("env", "vectorized")
def build_trading_env(cfg, df: pd.DataFrame, seed: int, num_envs: int | None = None, risk=None) -> TradingEnv:
    """A ``TradingEnv`` over ``df`` from the ``env`` config group (``num_envs`` overrides;
    ``risk``: the ``backtest`` group, to train under its execution and risk rules)."""
    market = VectorMarket(
        df, feature_columns(df), num_envs or cfg.num_envs, cfg.window_size, market_rules(cfg, risk, df.index), seed=seed
    )
    env = TradingEnv(market, action_space(cfg))
    env.recipe = functools.partial(build_trading_env, cfg, df, risk=risk)
    return env
