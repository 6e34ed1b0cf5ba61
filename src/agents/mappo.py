"""MAPPO and IPPO for the multi-agent market, from TorchRL's multi-agent parts.

Follows TorchRL's multi-agent PPO tutorial: ``MultiAgentMLP`` policy (decentralised, shared or
per-agent parameters) and critic (``centralised_critic``: over every learner's observation =
MAPPO; its own only = IPPO), ``ClipPPOLoss`` with the ``("agents", ...)`` keys and its GAE value
estimator, one ``Collector`` over the batched env. Each learner's input is its market window
flattened plus its account (the window is flattened here, in the model). Model selection as
single-agent PPO: the validation backtest's mean learner Sharpe picks the best policy.
"""

from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torch.distributions import Categorical
from torchrl.data import LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement
from torchrl.envs import ExplorationType, set_exploration_type
from torchrl.modules import MultiAgentMLP, ProbabilisticActor
from torchrl.objectives import ValueEstimators

from src.agents.base import Agent, MetricLogger
from src.agents.collection import local_collector
from src.agents.monitor import Monitor
from src.agents.ppo import (
    _BestPolicy,
    _check_batch_sizes,
    _progress,
    clip_loss,
    loss_metrics,
    minibatch_steps,
    optimiser,
)
from src.agents.resume import TrainingCheckpoints, TrainingParts, TrainingProgress, cpu_copy
from src.registry import register
from src.resources import Compute

KEYS = {
    "reward": ("agents", "reward"),
    "action": ("agents", "action"),
    "sample_log_prob": ("agents", "action_log_prob"),
    "value": ("agents", "state_value"),
    "done": ("agents", "done"),
    "terminated": ("agents", "terminated"),
}


class _AgentInputs(nn.Module):
    """(…, L, window, F) window and (…, L, 3) account -> (…, L, window * F + 3)."""

    def forward(self, observation: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        return torch.cat([observation.flatten(-2), account], dim=-1)


def _inputs() -> TensorDictModule:
    return TensorDictModule(
        _AgentInputs(), in_keys=[("agents", "observation"), ("agents", "account")], out_keys=[("agents", "inputs")]
    )


class MultiAgentPPO(Agent):
    """K learners of one ``MultiAgentTradingEnv`` trained together (``act`` maps their batched
    observations to their actions)."""

    frames_trained = 0

    def __init__(self, cfg, env, seed: int):
        self.cfg, self.seed, self.actions, self.name = cfg, seed, env.actions, cfg.name
        torch.manual_seed(seed)
        _, n_agents, window, n_features = env.observation_spec["agents", "observation"].shape
        width = window * n_features + 3
        hidden = list(cfg.hidden_sizes)

        def mlp(outputs: int, centralised: bool) -> MultiAgentMLP:
            return MultiAgentMLP(
                n_agent_inputs=width,
                n_agent_outputs=outputs,
                n_agents=n_agents,
                centralised=centralised,
                share_params=cfg.share_params,
                depth=len(hidden),
                num_cells=hidden,
                activation_class=nn.Tanh,
            )

        policy = TensorDictSequential(
            _inputs(),
            TensorDictModule(
                mlp(len(env.actions.levels), False), in_keys=[("agents", "inputs")], out_keys=[("agents", "logits")]
            ),
        )
        self.actor = ProbabilisticActor(
            policy,
            spec=env.full_action_spec["agents", "action"],
            in_keys=[("agents", "logits")],
            out_keys=[("agents", "action")],
            distribution_class=Categorical,
            return_log_prob=True,
            log_prob_key=("agents", "action_log_prob"),
        )
        self.critic = TensorDictSequential(
            _inputs(),
            TensorDictModule(
                mlp(1, cfg.centralised_critic), in_keys=[("agents", "inputs")], out_keys=[("agents", "state_value")]
            ),
        )

    def fit(
        self,
        train_env,
        log: MetricLogger,
        evaluate=None,
        compute: Compute | None = None,
        checkpoints: TrainingCheckpoints | None = None,
    ) -> None:
        """Train the learners; ``evaluate(agent)`` returns validation metrics with ``sharpe``
        (the learners' mean). ``checkpoints`` and ``agent.resume`` as in single-agent PPO: the
        training state (with the markets' and the fixed strategies' state) is written every
        ``checkpoint_every`` iterations and on Ctrl-C/SIGTERM, and a resumed run reaches the
        uninterrupted run's result bit for bit."""
        cfg = self.cfg
        compute = compute or Compute(torch.device("cpu"), torch.get_num_threads())
        _check_batch_sizes(cfg, train_env.batch_size[0])
        self.actor.to(compute.device)
        self.critic.to(compute.device)
        torch.manual_seed(self.seed)
        train_env.set_seed(self.seed)
        loss_fn = clip_loss(cfg, self.actor, self.critic, normalize_advantage_exclude_dims=(-2,))  # per agent
        loss_fn.set_keys(**KEYS)
        loss_fn.make_value_estimator(ValueEstimators.GAE, gamma=cfg.gamma, lmbda=cfg.gae_lambda)
        optimizer, schedule, n_iterations = optimiser(cfg, loss_fn)
        buffer = ReplayBuffer(
            storage=LazyTensorStorage(cfg.frames_per_batch, device=compute.device),
            sampler=SamplerWithoutReplacement(),
            batch_size=cfg.minibatch_size,
        )
        best, monitor, progress = _BestPolicy(cfg.patience), Monitor(compute.device), TrainingProgress()
        parts = TrainingParts(self, optimizer, schedule, best, buffer, train_env)
        resumed = checkpoints.resume(parts, progress) if checkpoints is not None and cfg.resume else None
        remaining = 0 if best.exhausted else cfg.total_frames - progress.frames
        collector: Any = (  # None when a resumed run had already finished
            local_collector(train_env, self.actor, cfg.frames_per_batch, remaining, compute) if remaining > 0 else None
        )
        if resumed is not None:
            torch.set_rng_state(resumed["torch_rng"])
        snapshot = None
        try:
            with _progress(cfg.progress) as bar:
                task = bar.add_task(f"{cfg.name.upper()} training", total=cfg.total_frames, completed=progress.frames)
                monitor.start()
                for batch in collector or ():  # none left: a resumed run that had finished
                    progress.iteration += 1
                    progress.frames += batch.numel()
                    collected = monitor.lap()
                    for _ in range(cfg.num_epochs):
                        with torch.no_grad():
                            loss_fn.value_estimator(
                                batch,
                                params=loss_fn.critic_network_params,
                                target_params=loss_fn.target_critic_network_params,
                            )
                        buffer.extend(batch.reshape(-1))
                        steps = cfg.frames_per_batch // cfg.minibatch_size
                        losses = minibatch_steps(loss_fn, optimizer, buffer, steps, cfg.max_grad_norm)
                    schedule.step()
                    collector.update_policy_weights_()
                    metrics = {
                        "train/reward_per_step": batch["next", "agents", "reward"].mean().item(),
                        **loss_metrics(losses, schedule),
                        **monitor.iteration(batch.numel(), collected, monitor.lap()),
                    }
                    if evaluate is not None and (
                        progress.iteration % cfg.eval_every == 0 or progress.iteration == n_iterations
                    ):
                        validation = evaluate(self)
                        metrics.update({f"val/{k}": v for k, v in validation.items()})
                        best.update(validation["sharpe"], self.actor, progress.iteration)
                    log(metrics, progress.frames)
                    bar.update(
                        task,
                        completed=progress.frames,
                        description=(
                            f"{cfg.name.upper()}  reward/step {metrics['train/reward_per_step']:+.1e}  "
                            f"best val Sharpe {best.score:+.2f}"
                        ),
                    )
                    if checkpoints is not None:
                        snapshot = checkpoints.record(parts, progress, cfg.checkpoint_every)
                    monitor.lap()  # evaluation and checkpoints are not collection time
                    if best.exhausted:
                        break
        except KeyboardInterrupt:
            if checkpoints is None:
                raise
            raise checkpoints.interrupted(snapshot) from None
        finally:
            if collector is not None:
                collector.shutdown()
        self.frames_trained = progress.frames
        if best.state is not None:
            self.actor.load_state_dict(best.state)
            log({"val/best_sharpe": best.score, "val/best_iteration": best.iteration}, progress.frames)

    @torch.no_grad()
    def act(self, observation: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        """(E, L) actions for (E, L, window, F) windows and (E, L, 3) accounts: the mode."""
        device = next(self.actor.parameters()).device
        td = TensorDict(
            {"agents": {"observation": observation, "account": account}}, batch_size=observation.shape[:1]
        ).to(device)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            return self.actor(td)["agents", "action"].cpu()

    def save(self, path, contract: dict):
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
        from src.agents.checkpoint import check_contract

        state = torch.load(path, weights_only=True, map_location=next(self.actor.parameters()).device)
        if check:
            check_contract(state.get("contract"), contract, str(path))
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])


@register("agent", "mappo")
def build_mappo(cfg, env, seed: int) -> MultiAgentPPO:
    return MultiAgentPPO(cfg, env, seed)


@register("agent", "ippo")
def build_ippo(cfg, env, seed: int) -> MultiAgentPPO:
    return MultiAgentPPO(cfg, env, seed)
