"""PPO from TorchRL parts: Collector over the batched env, GAE, ClipPPOLoss, Adam.

Follows TorchRL's sota-implementations/ppo: collect ``frames_per_batch`` frames, then for
``num_epochs`` recompute advantages and take minibatch steps over the batch. Every
``eval_every`` iterations the policy is backtested on the validation split; the best one by
validation Sharpe is kept (and training stops after ``patience`` evaluations without progress).
"""
import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torch.distributions import Categorical
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement
from torchrl.envs import ExplorationType, set_exploration_type
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from src.agents.base import Agent, MetricLogger
from src.agents.checkpoint import check_contract
from src.agents.models import build_network
from src.envs.actions import ActionSpace
from src.registry import register

OBS_KEYS = ["market", "account"]
Evaluator = Callable[[Agent], dict[str, float]]  # agent -> validation metrics


class _WithParams(nn.Module):
    """Network whose output is split into (loc, scale) for a continuous policy."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.extract = net, NormalParamExtractor()

    def forward(self, market, account):
        return self.extract(self.net(market, account))


class PPOAgent(Agent):
    name = "ppo"
    frames_trained = 0

    def __init__(self, cfg, window_size: int, n_features: int, actions: ActionSpace, spec, seed: int):
        self.cfg, self.seed, self.actions = cfg, seed, actions
        torch.manual_seed(seed)

        def network(out_dim: int) -> nn.Module:
            return build_network(cfg.network, window_size, n_features, cfg.hidden_sizes, out_dim,
                                 **dict(cfg.get("network_kwargs") or {}))

        if actions.discrete:
            module = TensorDictModule(network(len(actions.levels)), OBS_KEYS, ["logits"])
            self.actor = ProbabilisticActor(module, spec=spec, in_keys=["logits"],
                                            distribution_class=Categorical, return_log_prob=True)
        else:
            module = TensorDictModule(_WithParams(network(2)), OBS_KEYS, ["loc", "scale"])
            self.actor = ProbabilisticActor(
                module, spec=spec, in_keys=["loc", "scale"], distribution_class=TanhNormal,
                distribution_kwargs={"low": actions.low, "high": actions.high},
                return_log_prob=True)
        self.critic = ValueOperator(network(1), in_keys=OBS_KEYS)

    def fit(self, train_env, log: MetricLogger, evaluate: Evaluator | None = None) -> None:
        cfg = self.cfg
        _check_batch_sizes(cfg, train_env.batch_size[0])
        torch.manual_seed(self.seed)
        train_env.set_seed(self.seed)
        collector = Collector(train_env, self.actor, frames_per_batch=cfg.frames_per_batch,
                              total_frames=cfg.total_frames, auto_register_policy_transforms=False)
        advantage = GAE(gamma=cfg.gamma, lmbda=cfg.gae_lambda, value_network=self.critic,
                        average_gae=False)
        loss_fn = ClipPPOLoss(self.actor, self.critic, clip_epsilon=cfg.clip_epsilon,
                              entropy_coeff=cfg.entropy_coeff, critic_coeff=cfg.critic_coeff,
                              loss_critic_type="l2", normalize_advantage=True)
        optimizer = torch.optim.Adam(loss_fn.parameters(), lr=cfg.lr)
        n_iterations = max(cfg.total_frames // cfg.frames_per_batch, 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: 1.0 - i / n_iterations if cfg.anneal_lr else 1.0)
        buffer = ReplayBuffer(storage=LazyTensorStorage(cfg.frames_per_batch),
                              sampler=SamplerWithoutReplacement(), batch_size=cfg.minibatch_size)
        steps_per_epoch = cfg.frames_per_batch // cfg.minibatch_size
        best = _BestPolicy(cfg.patience)
        frames, start = 0, time.perf_counter()
        with _progress(cfg.progress) as progress:
            task = progress.add_task("PPO training", total=cfg.total_frames)
            for iteration, batch in enumerate(collector, start=1):
                frames += batch.numel()
                for epoch in range(cfg.num_epochs):
                    if epoch == 0 or cfg.recompute_advantage:
                        with torch.no_grad():
                            advantage(batch)
                        buffer.extend(batch.exclude("next").reshape(-1))  # the loss needs no next obs
                    for _ in range(steps_per_epoch):
                        losses = loss_fn(buffer.sample())
                        total = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
                        optimizer.zero_grad()
                        total.backward()
                        torch.nn.utils.clip_grad_norm_(loss_fn.parameters(), cfg.max_grad_norm)
                        optimizer.step()
                schedule.step()
                collector.update_policy_weights_()
                metrics = {
                    "train/reward_per_step": batch["next", "reward"].mean().item(),
                    "train/loss_objective": losses["loss_objective"].item(),
                    "train/loss_critic": losses["loss_critic"].item(),
                    "train/entropy": losses["entropy"].item(),
                    "train/lr": schedule.get_last_lr()[0],
                    "train/frames_per_second": frames / (time.perf_counter() - start),
                }
                if evaluate is not None and (iteration % cfg.eval_every == 0 or iteration == n_iterations):
                    validation = evaluate(self)
                    metrics.update({f"val/{k}": v for k, v in validation.items()})
                    best.update(validation["sharpe"], self.actor, iteration)
                log(metrics, frames)
                progress.update(task, completed=frames, description=(
                    f"PPO  reward/step {metrics['train/reward_per_step']:+.1e}  best val Sharpe "
                    f"{best.score:+.2f}"))
                if best.exhausted:
                    break
        collector.shutdown()
        self.frames_trained = frames
        if best.state is not None:
            self.actor.load_state_dict(best.state)
            log({"val/best_sharpe": best.score, "val/best_iteration": best.iteration}, frames)

    @torch.no_grad()
    def act(self, market: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        """The distribution's mode: the backtest is deterministic."""
        observation = TensorDict({"market": market, "account": account}, batch_size=market.shape[:1])
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            return self.actor(observation)["action"]

    def save(self, path: Path, contract: dict) -> Path:
        torch.save({"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                    "contract": contract}, path)
        return path

    def load(self, path: Path, contract: dict) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"agent.checkpoint={path}: no such file")
        state = torch.load(path, weights_only=True)
        check_contract(state.get("contract"), contract, str(path))
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])


class _BestPolicy:
    """The actor weights with the best validation score so far; ``patience`` for early stopping."""

    def __init__(self, patience: int | None):
        self.patience, self.score, self.iteration, self.state, self.stale = patience, float("-inf"), 0, None, 0

    def update(self, score: float, actor: nn.Module, iteration: int) -> None:
        if score > self.score:
            self.score, self.iteration, self.stale = score, iteration, 0
            self.state = copy.deepcopy(actor.state_dict())
        else:
            self.stale += 1

    @property
    def exhausted(self) -> bool:
        return self.patience is not None and self.stale >= self.patience


def _check_batch_sizes(cfg, num_envs: int) -> None:
    if cfg.frames_per_batch % num_envs:
        raise ValueError(f"agent.frames_per_batch={cfg.frames_per_batch} must be a multiple of "
                         f"env.num_envs={num_envs}")
    if cfg.frames_per_batch % cfg.minibatch_size:
        raise ValueError(f"agent.frames_per_batch={cfg.frames_per_batch} must be a multiple of "
                         f"agent.minibatch_size={cfg.minibatch_size}")


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("frames"), TimeRemainingColumn(), disable=not enabled)


@register("agent", "ppo")
def build_ppo(cfg, env, seed: int) -> PPOAgent:
    _, window_size, n_features = env.observation_spec["market"].shape
    return PPOAgent(cfg, window_size, n_features, env.actions, env.action_spec, seed)
