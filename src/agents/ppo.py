"""PPO from TorchRL parts: Collector over the batched env, GAE, ClipPPOLoss, Adam.

Follows TorchRL's sota-implementations/ppo: collect ``frames_per_batch`` frames, then for
``num_epochs`` recompute advantages and take minibatch steps over the batch.
"""
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from tensordict.nn import TensorDictModule
from torch.distributions import Categorical
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement
from torchrl.envs import ExplorationType, set_exploration_type
from torchrl.modules import ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from src.agents.base import Agent, MetricLogger
from src.agents.models import WindowMLP
from src.registry import register

OBS_KEYS = ["market", "account"]


class PPOAgent(Agent):
    name = "ppo"

    def __init__(self, cfg, window_size: int, n_features: int, action_spec, seed: int):
        self.cfg = cfg
        self.seed = seed
        torch.manual_seed(seed)
        hidden = list(cfg.hidden_sizes)
        n_actions = action_spec.space.n
        actor_net = WindowMLP(window_size, n_features, 2, hidden, n_actions)
        critic_net = WindowMLP(window_size, n_features, 2, hidden, 1)
        self.actor = ProbabilisticActor(
            TensorDictModule(actor_net, in_keys=OBS_KEYS, out_keys=["logits"]),
            spec=action_spec, in_keys=["logits"], distribution_class=Categorical,
            return_log_prob=True,
        )
        self.critic = ValueOperator(critic_net, in_keys=OBS_KEYS)

    def fit(self, train_env, log: MetricLogger) -> None:
        cfg = self.cfg
        if cfg.frames_per_batch % train_env.batch_size[0]:
            raise ValueError(f"agent.frames_per_batch={cfg.frames_per_batch} must be a multiple "
                             f"of env.num_envs={train_env.batch_size[0]}")
        if cfg.frames_per_batch % cfg.minibatch_size:
            raise ValueError("agent.frames_per_batch must be a multiple of agent.minibatch_size")
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
        buffer = ReplayBuffer(storage=LazyTensorStorage(cfg.frames_per_batch),
                              sampler=SamplerWithoutReplacement(), batch_size=cfg.minibatch_size)
        steps_per_epoch = cfg.frames_per_batch // cfg.minibatch_size
        frames, start = 0, time.perf_counter()
        with _progress() as progress:
            task = progress.add_task("PPO training", total=cfg.total_frames)
            for iteration, batch in enumerate(collector):
                frames += batch.numel()
                for _ in range(cfg.num_epochs):
                    with torch.no_grad():
                        advantage(batch)
                    buffer.extend(batch.reshape(-1))
                    for _ in range(steps_per_epoch):
                        losses = loss_fn(buffer.sample())
                        total = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
                        optimizer.zero_grad()
                        total.backward()
                        torch.nn.utils.clip_grad_norm_(loss_fn.parameters(), cfg.max_grad_norm)
                        optimizer.step()
                collector.update_policy_weights_()
                metrics = {
                    "train/reward_per_step": batch["next", "reward"].mean().item(),
                    "train/loss_objective": losses["loss_objective"].item(),
                    "train/loss_critic": losses["loss_critic"].item(),
                    "train/entropy": losses["entropy"].item(),
                    "train/frames_per_second": frames / (time.perf_counter() - start),
                }
                log(metrics, frames)
                progress.update(task, completed=frames,
                                description=f"PPO training  reward/step "
                                            f"{metrics['train/reward_per_step']:+.2e}")
        collector.shutdown()

    @torch.no_grad()
    def act(self, market: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        """Most likely action (the distribution's mode): the backtest is deterministic."""
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            logits = self.actor.module[0].module(market, account)
        return logits.argmax(dim=-1)

    def save(self, path: Path) -> Path:
        torch.save({"actor": self.actor.state_dict(), "critic": self.critic.state_dict()}, path)
        return path

    def load(self, path: Path) -> None:
        state = torch.load(path, weights_only=True)
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("frames"), TimeRemainingColumn())


@register("agent", "ppo")
def build_ppo(cfg, env, seed: int) -> PPOAgent:
    _, window_size, n_features = env.observation_spec["market"].shape
    return PPOAgent(cfg, window_size, n_features, env.action_spec, seed)
