"""PPO variants train, checkpoints round-trip, and PPO learns a planted signal."""
from pathlib import Path

import pytest
import torch

from src import registry
from src.run import run
from tests.conftest import compose_config

TINY = ["agent.total_frames=1024", "agent.frames_per_batch=512", "agent.minibatch_size=256",
        "agent.progress=false", "env.num_envs=8", "env.episode_length=64"]


@pytest.mark.parametrize("overrides", [["agent=ppo"], ["agent=ppo_conv"], ["env=continuous"],
                                       ["env.reward=differential_sharpe", "env.reward_param=0.01"]])
def test_ppo_variant_trains_and_round_trips(overrides, market_df, tmp_path):
    cfg = compose_config(overrides + TINY)
    env = registry.build("env", cfg.env, market_df, seed=0)
    agent = registry.build("agent", cfg.agent, env, seed=0)
    curve = []
    agent.fit(env, lambda metrics, step: curve.append(step),
              evaluate=lambda a: {"sharpe": float(len(curve))})
    assert curve[-1] == 1024
    td = env.reset()
    actions = agent.act(td["market"], td["account"])
    assert env.action_spec.is_in(actions)
    path = agent.save(tmp_path / "policy.pt")
    clone = registry.build("agent", cfg.agent, env, seed=1)
    clone.load(path)
    assert torch.equal(clone.act(td["market"], td["account"]), actions)


def test_checkpoint_must_exist(market_df):
    cfg = compose_config(TINY)
    agent = registry.build("agent", cfg.agent, registry.build("env", cfg.env, market_df, seed=0), seed=0)
    with pytest.raises(FileNotFoundError, match="agent.checkpoint"):
        agent.load(Path("no/such/policy.pt"))


@pytest.mark.slow
def test_ppo_beats_baselines_on_planted_signal(tmp_path, monkeypatch):
    """With a planted momentum signal, PPO must clearly beat buy-and-hold and random out of sample."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    cfg = compose_config(["experiment=planted_signal", "agent.total_frames=98304",
                          "agent.progress=false", "backtest.plots=false"])
    metrics = run(cfg, tmp_path / "out")
    ppo, hold, rand = metrics["ppo"], metrics["buy_and_hold"], metrics["random"]
    assert ppo["sharpe"] > hold["sharpe"] + 1.0 and ppo["sharpe"] > rand["sharpe"] + 1.0
    assert ppo["total_return"] > max(hold["total_return"], rand["total_return"]) + 0.1
