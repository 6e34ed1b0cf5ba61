"""PPO variants train, checkpoints round-trip, and PPO learns a planted signal."""

from pathlib import Path

import pytest
import torch

from src import registry
from src.agents.checkpoint import CheckpointMismatchError, policy_contract
from src.envs.torchrl_env import feature_columns
from src.run import run
from tests.conftest import compose_config, mlflow_store

TINY = [
    "agent.total_frames=1024",
    "agent.frames_per_batch=512",
    "agent.minibatch_size=256",
    "agent.progress=false",
    "env.num_envs=8",
    "env.episode_length=64",
]


@pytest.mark.parametrize(
    "overrides",
    [
        ["agent=ppo"],
        ["agent=ppo_conv"],
        ["env=continuous"],
        ["env.reward=differential_sharpe", "env.reward_param=0.01"],
    ],
)
def test_ppo_variant_trains_and_round_trips(overrides, market_df, tmp_path):
    cfg = compose_config(overrides + TINY)
    env = registry.build("env", cfg.env, market_df, seed=0)
    agent = registry.build("agent", cfg.agent, env, seed=0)
    curve = []
    agent.fit(env, lambda metrics, step: curve.append(step), evaluate=lambda a: {"sharpe": float(len(curve))})
    assert curve[-1] == 1024
    td = env.reset()
    actions = agent.act(td["market"], td["account"])
    assert env.action_spec.is_in(actions)
    contract = policy_contract(cfg, feature_columns(market_df), {})
    path = agent.save(tmp_path / "policy.pt", contract)
    clone = registry.build("agent", cfg.agent, env, seed=1)
    clone.load(path, contract)
    assert torch.equal(clone.act(td["market"], td["account"]), actions)


def test_checkpoint_must_exist(market_df):
    cfg = compose_config(TINY)
    agent = registry.build("agent", cfg.agent, registry.build("env", cfg.env, market_df, seed=0), seed=0)
    with pytest.raises(FileNotFoundError, match="agent.checkpoint"):
        agent.load(Path("no/such/policy.pt"), {})


def test_a_checkpoint_carries_its_contract_and_refuses_a_run_it_does_not_fit(tmp_path):
    """Features, normaliser statistics, window and action space travel with the weights; loading
    into a run that differs in any of them fails with the differences."""
    from src.run import Market

    cfg = compose_config(TINY + ["data.n_bars=3000", "features.normalize.method=train_zscore"])
    market = Market(cfg)
    train = market.train()
    env = registry.build("env", cfg.env, train, seed=0)
    agent = registry.build("agent", cfg.agent, env, seed=0)
    contract = policy_contract(cfg, feature_columns(train), market.scaler)
    assert contract["normalize"]["stats"]["mean"] and contract["features"] == feature_columns(train)
    path = agent.save(tmp_path / "policy.pt", contract)
    stored = torch.load(path, weights_only=True)["contract"]
    assert stored == contract and len(stored["config_hash"]) == 64
    agent.load(path, contract)  # the same run: fine
    other_data = Market(
        compose_config(TINY + ["data.n_bars=3000", "data.seed=99", "features.normalize.method=train_zscore"])
    )
    for overrides, changed, scaler in [
        (["env.window_size=16"], "window_size", market.scaler),
        (["env.allow_short=true"], "action_space", market.scaler),
        (["features.normalize.method=rolling_zscore"], "normalize", {}),
        ([], "normalize", other_data.scaler),  # statistics fitted on other train bars
    ]:
        other = compose_config(TINY + ["data.n_bars=3000", "features.normalize.method=train_zscore"] + overrides)
        with pytest.raises(CheckpointMismatchError, match=rf"does not fit this run \({changed}: checkpoint"):
            agent.load(path, policy_contract(other, feature_columns(train), scaler))
    with pytest.raises(CheckpointMismatchError, match="features: checkpoint"):
        agent.load(path, policy_contract(cfg, feature_columns(train)[:-1], market.scaler))


@pytest.mark.slow
def test_ppo_beats_baselines_on_planted_signal(tmp_path, monkeypatch):
    """With a planted momentum signal, PPO must clearly beat buy-and-hold and random out of sample."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store(tmp_path))
    cfg = compose_config(
        ["experiment=planted_signal", "agent.total_frames=98304", "agent.progress=false", "backtest.plots=false"]
    )
    metrics = run(cfg, tmp_path / "out")
    ppo, hold, rand = metrics["ppo"], metrics["buy_and_hold"], metrics["random"]
    assert ppo["sharpe"] > hold["sharpe"] + 1.0 and ppo["sharpe"] > rand["sharpe"] + 1.0
    assert ppo["total_return"] > max(hold["total_return"], rand["total_return"]) + 0.1
