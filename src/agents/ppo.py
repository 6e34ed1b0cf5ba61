"""PPO from TorchRL parts: Collector over the batched env, GAE, ClipPPOLoss, Adam.

Follows TorchRL's sota-implementations/ppo: collect ``frames_per_batch`` frames, then for
``num_epochs`` recompute advantages and take minibatch steps over the batch. Every
``eval_every`` iterations the policy is backtested on the validation split; the best one by
validation Sharpe is kept (and training stops after ``patience`` evaluations without progress).
"""

import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torch.distributions import Categorical
from torchrl.data import LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement
from torchrl.envs import ExplorationType, set_exploration_type
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from src.agents.base import Agent, MetricLogger
from src.agents.checkpoint import check_contract
from src.agents.collection import RayCollection, WorkerScaler, local_collector, worker_counts
from src.agents.models import build_network
from src.agents.monitor import Monitor
from src.agents.resume import TrainingCheckpoints, TrainingParts, TrainingProgress, cpu_copy
from src.envs.actions import ActionSpace
from src.registry import register
from src.resources import Compute

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
    scaling_log: list[str]  # the Ray worker-count changes of the last fit, with their reasons

    def __init__(self, cfg, window_size: int, n_features: int, actions: ActionSpace, spec, seed: int):
        self.cfg, self.seed, self.actions = cfg, seed, actions
        self.window_size, self.n_features = window_size, n_features  # the observation it takes
        torch.manual_seed(seed)

        def network(out_dim: int) -> nn.Module:
            return build_network(
                cfg.network, window_size, n_features, cfg.hidden_sizes, out_dim, **dict(cfg.get("network_kwargs") or {})
            )

        if actions.discrete:
            module = TensorDictModule(network(len(actions.levels)), OBS_KEYS, ["logits"])
            self.actor = ProbabilisticActor(
                module, spec=spec, in_keys=["logits"], distribution_class=Categorical, return_log_prob=True
            )
        else:
            module = TensorDictModule(_WithParams(network(2)), OBS_KEYS, ["loc", "scale"])
            self.actor = ProbabilisticActor(
                module,
                spec=spec,
                in_keys=["loc", "scale"],
                distribution_class=TanhNormal,
                distribution_kwargs={"low": actions.low, "high": actions.high},
                return_log_prob=True,
            )
        self.critic = ValueOperator(network(1), in_keys=OBS_KEYS)

    def fit(
        self,
        train_env,
        log: MetricLogger,
        evaluate: Evaluator | None = None,
        compute: Compute | None = None,
        checkpoints: TrainingCheckpoints | None = None,
    ) -> None:
        """Train on ``train_env`` with ``compute`` (default: this process's CPU). With
        ``checkpoints``, the training state is written there every
        ``checkpoint_every`` iterations and on Ctrl-C/SIGTERM (then ``TrainingInterrupted`` is
        raised); with ``agent.resume`` training continues from the checkpoint found there."""
        cfg = self.cfg
        self.scaling_log = []
        compute = compute or Compute(torch.device("cpu"), torch.get_num_threads())
        _check_batch_sizes(cfg, train_env.batch_size[0])
        self.actor.to(compute.device)
        self.critic.to(compute.device)
        torch.manual_seed(self.seed)
        train_env.set_seed(self.seed)
        advantage = GAE(gamma=cfg.gamma, lmbda=cfg.gae_lambda, value_network=self.critic, average_gae=False)
        loss_fn = clip_loss(cfg, self.actor, self.critic)
        optimizer, schedule, n_iterations = optimiser(cfg, loss_fn)
        best = _BestPolicy(cfg.patience)
        buffer = ReplayBuffer(
            storage=LazyTensorStorage(cfg.frames_per_batch, device=compute.device),
            sampler=SamplerWithoutReplacement(),
            batch_size=cfg.minibatch_size,
        )
        store = checkpoints
        progress, parts = TrainingProgress(), TrainingParts(self, optimizer, schedule, best, buffer, train_env)
        resumed = store.resume(parts, progress) if store is not None and cfg.resume else None
        remaining = 0 if best.exhausted else cfg.total_frames - progress.frames
        # a TorchRL Collector or a RayCollection; None when a resumed run had already finished
        collection: Any = self._collection(train_env, remaining, compute) if remaining > 0 else None
        if resumed is not None:
            torch.set_rng_state(resumed["torch_rng"])
        steps_per_epoch = cfg.frames_per_batch // cfg.minibatch_size
        monitor = Monitor(compute.device)
        snapshot = None
        try:
            with _progress(cfg.progress) as bar:
                task = bar.add_task("PPO training", total=cfg.total_frames, completed=progress.frames)
                monitor.start()
                for batch in collection or ():  # none left: a resumed run that had finished
                    progress.iteration += 1
                    progress.frames += batch.numel()
                    collected = monitor.lap()
                    for epoch in range(cfg.num_epochs):
                        if epoch == 0 or cfg.recompute_advantage:
                            with torch.no_grad():
                                advantage(batch)
                            buffer.extend(batch.exclude("next").reshape(-1))  # the loss needs no next obs
                        losses = minibatch_steps(loss_fn, optimizer, buffer, steps_per_epoch, cfg.max_grad_norm)
                    schedule.step()
                    collection.update_policy_weights_()
                    metrics = {
                        "train/reward_per_step": batch["next", "reward"].mean().item(),
                        **loss_metrics(losses, schedule),
                        **monitor.iteration(batch.numel(), collected, monitor.lap()),
                    }
                    if evaluate is not None and (
                        progress.iteration % cfg.eval_every == 0 or progress.iteration == n_iterations
                    ):
                        validation = evaluate(self)
                        metrics.update({f"val/{k}": v for k, v in validation.items()})
                        best.update(validation["sharpe"], self.actor, progress.iteration)
                    if isinstance(collection, RayCollection):
                        metrics["perf/ray_workers"] = collection.workers  # those that collected this batch
                        self._scale(collection, metrics["perf/frames_per_second"])
                    log(metrics, progress.frames)
                    bar.update(
                        task,
                        completed=progress.frames,
                        description=(
                            f"PPO  r/step {metrics['train/reward_per_step']:+.1e}  val Sharpe "
                            f"{best.score:+.2f}  {metrics['perf/frames_per_second']:,.0f} fr/s  "
                            f"{metrics['perf/rss_gb']:.1f} GB"
                        ),
                    )
                    if store is not None:
                        snapshot = store.record(parts, progress, cfg.checkpoint_every)
                    monitor.lap()  # evaluation and checkpoints are not collection time
                    if best.exhausted:
                        break
        except KeyboardInterrupt:
            if store is None:
                raise
            raise store.interrupted(snapshot) from None
        finally:
            if collection is not None:
                collection.shutdown()
        self.frames_trained = progress.frames
        if best.state is not None:
            self.actor.load_state_dict(best.state)
            log({"val/best_sharpe": best.score, "val/best_iteration": best.iteration}, progress.frames)

    def _collection(self, train_env, frames: int, compute: Compute):
        """The collector of this run: local, or Ray workers (``resources=ray``)."""
        cfg = self.cfg
        if compute.ray is None:
            return local_collector(train_env, self.actor, cfg.frames_per_batch, frames, compute)
        if train_env.recipe is None:
            raise ValueError("resources=ray needs an env built by the registry (env.recipe)")
        collection = RayCollection(
            train_env.recipe, self.actor, cfg.frames_per_batch, frames, compute, train_env.batch_size[0], self.seed
        )
        settings = compute.ray
        if settings.autoscale:
            allowed = worker_counts(train_env.batch_size[0], settings.min_workers, settings.max_workers)
            collection.scaler = WorkerScaler(
                collection.workers, allowed, settings.scale_threshold, settings.scale_every, settings.reprobe_every
            )
        return collection

    def _scale(self, collection: RayCollection, frames_per_second: float) -> None:
        """Changes the Ray worker count when the scaler decides (the reason is printed and kept)."""
        scaler = collection.scaler
        decision = scaler.observe(frames_per_second) if scaler is not None else None
        if scaler is not None and decision is not None:
            workers, reason = decision
            if workers > collection.workers and collection.free_cpus() < workers:
                scaler.workers, scaler.ceiling, scaler.last_change = collection.workers, workers, None
                workers, reason = collection.workers, f"{reason}, but the cluster has no CPUs for them"
            line = f"ray workers: {collection.workers} -> {workers}: {reason}"
            print(line, file=sys.stderr)
            self.scaling_log.append(line)
            if workers != collection.workers:
                collection.restart(workers)

    @torch.no_grad()
    def act(self, market: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        """The distribution's mode: the backtest is deterministic."""
        device = next(self.actor.parameters()).device
        observation = TensorDict({"market": market, "account": account}, batch_size=market.shape[:1]).to(device)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            return self.actor(observation)["action"].cpu()

    def save(self, path: Path, contract: dict) -> Path:
        torch.save(
            {
                "actor": cpu_copy(self.actor.state_dict()),
                "critic": cpu_copy(self.critic.state_dict()),
                "contract": contract,
            },
            path,
        )
        return path

    def load(self, path: Path, contract: dict, check: bool = True) -> None:
        """Load a saved policy; ``check=False`` (a warm start on new bars) skips the contract."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"agent.checkpoint={path}: no such file")
        state = torch.load(path, weights_only=True, map_location=next(self.actor.parameters()).device)
        if check:
            check_contract(state.get("contract"), contract, str(path))
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])


def clip_loss(cfg, actor, critic, **options) -> ClipPPOLoss:
    """The clipped PPO loss from the agent config (``options``: extra ``ClipPPOLoss`` arguments)."""
    return ClipPPOLoss(
        actor,
        critic,
        clip_epsilon=cfg.clip_epsilon,
        entropy_coeff=cfg.entropy_coeff,
        critic_coeff=cfg.critic_coeff,
        loss_critic_type="l2",
        normalize_advantage=True,
        **options,
    )


def optimiser(cfg, loss_fn: ClipPPOLoss):
    """(Adam over the loss's parameters, its LR schedule: linear decay to 0 over the iterations
    with ``anneal_lr``, the number of iterations)."""
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=cfg.lr)
    n_iterations = max(cfg.total_frames // cfg.frames_per_batch, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 - i / n_iterations if cfg.anneal_lr else 1.0)
    return optimizer, schedule, n_iterations


def minibatch_steps(loss_fn, optimizer, buffer, steps: int, max_grad_norm: float):
    """``steps`` clipped-PPO gradient steps on minibatches sampled from ``buffer`` (objective +
    critic + entropy loss, gradients clipped to ``max_grad_norm``); returns the last losses."""
    for _ in range(steps):
        losses = loss_fn(buffer.sample())
        total = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(loss_fn.parameters(), max_grad_norm)
        optimizer.step()
    return losses


def loss_metrics(losses, schedule) -> dict[str, float]:
    """An iteration's last losses, entropy and learning rate as ``train/*`` metrics."""
    return {
        "train/loss_objective": losses["loss_objective"].item(),
        "train/loss_critic": losses["loss_critic"].item(),
        "train/entropy": losses["entropy"].item(),
        "train/lr": schedule.get_last_lr()[0],
    }


class _BestPolicy:
    """The actor weights with the best validation score so far; ``patience`` for early stopping."""

    def __init__(self, patience: int | None):
        self.patience, self.score, self.iteration, self.stale = patience, float("-inf"), 0, 0
        self.state: dict[str, torch.Tensor] | None = None

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
        raise ValueError(f"agent.frames_per_batch={cfg.frames_per_batch} must be a multiple of env.num_envs={num_envs}")
    if cfg.frames_per_batch % cfg.minibatch_size:
        raise ValueError(
            f"agent.frames_per_batch={cfg.frames_per_batch} must be a multiple of "
            f"agent.minibatch_size={cfg.minibatch_size}"
        )


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=12),
        TimeRemainingColumn(),
        disable=not enabled,
    )  # fits an 80-column terminal: nothing of the description is cut


@register("agent", "ppo")
def build_ppo(cfg, env, seed: int) -> PPOAgent:
    _, window_size, n_features = env.observation_spec["market"].shape
    return PPOAgent(cfg, window_size, n_features, env.actions, env.action_spec, seed)
