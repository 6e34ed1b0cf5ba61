"""The TorchRL wrapper passes TorchRL's own spec checks and resets only what it is asked to."""

import torch
from torchrl.envs import EnvBase
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


def test_outputs_handed_out_are_never_written_again(market_df):
    """The kernel writes each step into fresh tensors: what TorchRL holds (observations, account,
    reward, done flags) stays as it was given, through later steps and partial resets, and the
    observation equals the window of the bars the env is at."""
    env = registry.build("env", compose_config().env, market_df, seed=0, num_envs=4)
    td = env.reset()
    given, kept = [td], [td.clone()]
    for k in range(8):
        td = env.step(td.clone().set("action", torch.full((4,), k % 2, dtype=torch.int64)))["next"]
        given.append(td)
        kept.append(td.clone())
        if k == 2:
            td = env.reset(td.clone().set("_reset", torch.tensor([[True], [False], [True], [False]])))
            given.append(td)
            kept.append(td.clone())
    assert all((a == b).all() for a, b in zip(given, kept))
    features = torch.from_numpy(env.market.features)
    for i, t in enumerate(env.market.t):
        assert torch.equal(td["market"][i], features[t - 31 : t + 1])


def test_lean_step_and_maybe_reset_returns_what_torchrl_returns(market_df):
    """``TradingEnv.step_and_maybe_reset`` (the collector's per-step call) gives the same two
    tensordicts as TorchRL's ``EnvBase.step_and_maybe_reset``, entry by entry, through staggered
    episode ends and partial resets, carrying the policy's and the collector's own entries."""
    cfg = compose_config(["env.episode_length=6"]).env
    lean, generic = (registry.build("env", cfg, market_df, seed=5, num_envs=4) for _ in range(2))
    carriers = [env.reset() for env in (lean, generic)]
    generator = torch.Generator().manual_seed(0)
    resets = 0
    for k in range(40):
        action = torch.randint(2, (4,), generator=generator)
        extra = {"logits": torch.randn(4, 2, generator=generator), "collector": {"traj_ids": torch.arange(4) + k}}
        if k == 3:  # stagger the episodes
            carriers = [
                env.reset(td.set("_reset", torch.tensor([[True], [False], [False], [False]])))
                for env, td in zip((lean, generic), carriers)
            ]
        inputs = [td.update({"action": action.clone(), **extra}) for td in carriers]
        lean_out, lean_carrier = lean.step_and_maybe_reset(inputs[0])
        generic_out, generic_carrier = EnvBase.step_and_maybe_reset(generic, inputs[1])
        for mine, theirs in ((lean_out, generic_out), (lean_carrier, generic_carrier)):
            assert set(mine.keys(True, True)) == set(theirs.keys(True, True))
            assert (mine == theirs).all(), f"step {k}"
        resets += int(generic_out["next", "done"].any())
        carriers = [lean_carrier, generic_carrier]
    assert resets >= 5 and lean_carrier["collector", "traj_ids"].tolist() == [39, 40, 41, 42]
