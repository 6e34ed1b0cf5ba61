"""``TradingEnv``: N kernel envs as one batched TorchRL ``EnvBase`` (batch_size=[N]).

Observation keys: ``market`` (N, window_size, n_features) float32 and ``account`` (N, 2) float32
(position as a fraction of equity, log equity). ``action``: see ``src/envs/actions.py``. The kernel
writes each step's outputs (observations, account, reward, done flags) straight into new
tensors that are handed to TorchRL (no copy; the kernel never writes into them again), in
page-locked (pinned) host memory when ``pin_memory`` is set (a GPU learner), so the collector's
move to the GPU is one asynchronous DMA copy. Finished envs are reset by TorchRL's partial
``_reset`` mask, which the numba reset kernel applies. ``step_and_maybe_reset``, the collector's
per-step call, is a lean version of TorchRL's that returns the same tensordicts.
"""

import functools
from collections.abc import Callable

import pandas as pd
import torch
from tensordict import TensorDict, TensorDictBase, is_tensor_collection
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from src.data.timeframes import periods_per_year
from src.data.validate import OHLCV
from src.envs.actions import ActionSpace
from src.envs.allocator import keep_freed_memory
from src.envs.market import MarketRules, VectorMarket
from src.registry import register

NOT_CARRIED = ("next", "done", "terminated", "truncated")  # root keys a step does not carry over
# a step's outputs: TorchRL key -> the VectorMarket array the kernel writes it into
STEP_OUTPUTS = {
    "market": "obs",
    "account": "account",
    "reward": "reward",
    "terminated": "terminated",
    "truncated": "truncated",
}
RESET_OUTPUTS = ("market", "account")  # what a reset writes (the done flags it returns are zeros)
keep_freed_memory()  # every step hands out fresh output tensors (see src/envs/allocator.py)


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
        self._layout = {  # output name -> (shape, dtype) of the tensors handed to TorchRL
            "market": ((n, w, f), torch.float32),
            "account": ((n, 2), torch.float32),
            "reward": ((n, 1), torch.float32),
            "terminated": ((n, 1), torch.bool),
            "truncated": ((n, 1), torch.bool),
        }
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

    def _fresh_outputs(self, keys, copy_current: bool) -> dict[str, torch.Tensor]:
        """New tensors for the outputs ``keys`` that the kernel writes into from now on and that
        are handed to TorchRL as they are (the kernel never writes into them again), pinned for
        a GPU learner; with ``copy_current`` they start as copies of the current outputs (a
        partial reset rewrites some envs only)."""
        fresh, arrays = {}, {}
        for key in keys:
            shape, dtype = self._layout[key]
            tensor = fresh[key] = torch.empty(shape, dtype=dtype, pin_memory=self.pin_memory)
            if copy_current:
                tensor.copy_(torch.from_numpy(getattr(self.market, STEP_OUTPUTS[key])).view(shape))
            arrays[STEP_OUTPUTS[key]] = tensor.numpy()
        self.market.use_output_buffers(**arrays)
        return fresh

    def resume_state(self) -> dict:
        """The env's whole evolving state (a training checkpoint's): its market's arrays."""
        return self.market.state()

    def resume_from(self, state: dict) -> None:
        """The next full reset continues from ``state`` (``resume_state()`` of a checkpoint)
        instead of starting new episodes: a collector built on this env picks up where a
        checkpointed one stopped."""
        self._resume_state = state

    def _reset(self, tensordict: TensorDictBase | None, **kwargs) -> TensorDictBase:
        mask = None
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict["_reset"].reshape(-1).numpy()
        outputs = self._fresh_outputs(RESET_OUTPUTS, copy_current=mask is not None and not mask.all())
        if mask is None and self._resume_state is not None:
            self.market.load_state(self._resume_state)
            self._resume_state = None
        else:
            self.market.reset(mask)
        done = torch.zeros(self.batch_size + (1,), dtype=torch.bool)
        return self._outputs({**outputs, "done": done, "terminated": done.clone(), "truncated": done.clone()})

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        return self._outputs(self._step_tensors(tensordict)[0])

    def _step_tensors(self, tensordict: TensorDictBase) -> tuple[dict[str, torch.Tensor], int]:
        """One kernel step towards ``tensordict["action"]``: its outputs by key, and how many envs
        finished (none: ``done`` is all False without looking at the flags)."""
        outputs = self._fresh_outputs(STEP_OUTPUTS, copy_current=False)  # the kernel writes every env's outputs
        finished = self.market.step(self.actions.to_targets(tensordict["action"]))
        if finished:
            outputs["done"] = outputs["terminated"] | outputs["truncated"]
        else:
            outputs["done"] = torch.zeros(self._layout["terminated"][0], dtype=torch.bool, pin_memory=self.pin_memory)
        return outputs, finished

    def _outputs(self, tensors: dict[str, torch.Tensor]) -> TensorDictBase:
        """``tensors`` as one TensorDict on the env's device, without TensorDict's per-entry
        validation: they are built here with the specs' shapes, dtypes and device, as
        ``test_torchrl_env.py`` checks with TorchRL's ``check_env_specs``."""
        return TensorDict._new_unsafe(tensors, batch_size=self.batch_size, device=self.device)

    def step_and_maybe_reset(self, tensordict: TensorDictBase) -> tuple[TensorDictBase, TensorDictBase]:
        """What a collector calls every step: TorchRL's ``step``, ``step_mdp`` and partial reset,
        without ``EnvBase.step``'s generic pass over the outputs (``_step`` writes every done key
        and the reward in the specs' shapes). Returns what ``EnvBase.step_and_maybe_reset``
        returns (tested key by key). Partial steps (``_step``), preset ``next`` entries and
        ``run_type_checks`` take TorchRL's own path."""
        keys = tensordict.keys()
        if self.run_type_checks or "_step" in keys or "next" in keys or tensordict.device != self.device:
            return super().step_and_maybe_reset(tensordict)
        outputs, finished = self._step_tensors(tensordict)
        # TorchRL's step_mdp: the root's entries but "next" and the done keys, then the outputs
        # but the reward (nested tensordicts are shallow copies)
        carried = {
            key: value.copy() if is_tensor_collection(value) else value
            for key, value in tensordict.items()
            if key not in NOT_CARRIED
        }
        carried.update((key, value) for key, value in outputs.items() if key != "reward")
        tensordict._set_str("next", self._outputs(outputs), validated=True, inplace=False, non_blocking=False)
        carrier = self._outputs(carried)
        return tensordict, self.maybe_reset(carrier) if finished else carrier

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
