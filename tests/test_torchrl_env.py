"""The TorchRL wrapper passes TorchRL's own spec checks and resets only what it is asked to."""

import torch
from torchrl.envs.utils import check_env_specs

from src import registry
from tests.conftest import compose_config


def test_env_passes_torchrl_checks(market_df):
    env = registry.build("env", compose_config().env, market_df, seed=0, num_envs=8)
    check_env_specs(env)
    td = env.reset()
    assert td["market"].shape == (8, 32, len(market_df.columns) - 5)
    assert td["account"].shape == (8, 2)


def test_partial_reset_keeps_other_envs(market_df):
    env = registry.build("env", compose_config().env, market_df, seed=0, num_envs=4)
    td = env.reset()
    td["action"] = torch.ones(4, dtype=torch.int64)
    env.step(td)
    before = env.market.t.copy()
    mask = torch.tensor([[True], [False], [False], [True]])
    env.reset(td.set("_reset", mask))
    assert (env.market.t[1:3] == before[1:3]).all()
    assert (env.market.steps[[0, 3]] == 0).all() and (env.market.steps[1:3] == 1).all()


def test_observations_handed_out_are_never_written_again(market_df):
    """The kernel writes each step into a fresh tensor: what TorchRL holds stays as it was given,
    through later steps and partial resets, and equals the window of the bars the env is at."""
    env = registry.build("env", compose_config().env, market_df, seed=0, num_envs=4)
    td = env.reset()
    given, kept = [td["market"]], [td["market"].clone()]
    for k in range(6):
        td["action"] = torch.full((4,), k % 2, dtype=torch.int64)
        td = env.step(td)["next"]
        given.append(td["market"])
        kept.append(td["market"].clone())
        if k == 2:
            reset = env.reset(td.clone().set("_reset", torch.tensor([[True], [False], [True], [False]])))
            given.append(reset["market"])
            kept.append(reset["market"].clone())
            td = reset
    assert all(torch.equal(a, b) for a, b in zip(given, kept))
    features = torch.from_numpy(env.market.features)
    for i, t in enumerate(env.market.t):
        assert torch.equal(td["market"][i], features[t - 31 : t + 1])
