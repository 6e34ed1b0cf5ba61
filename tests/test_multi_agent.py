"""The multi-agent market: single-agent equivalence, conservation, no look-ahead, netting, the
TorchRL env, mappo/ippo, crowding, and the run from the README."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchrl.envs.utils import check_env_specs

from src import registry
from src.agents.resume import TrainingCheckpoints, TrainingInterrupted
from src.envs import kernels
from src.envs.market import MarketRules, VectorMarket
from src.envs.multi_market import FEE_PAID, IMPACT_PAID, SLIPPAGE_PAID, Impact, MultiMarket
from src.envs.torchrl_env import feature_columns
from tests.conftest import compose_config, mlflow_store, run_cli, runs

RULES = MarketRules(
    transaction_fee=0.001,
    slippage_bps=2.0,
    max_leverage=2.0,
    episode_length=400,
    reward="differential_sharpe",
    reward_param=0.05,
    capital=1e5,
)
TINY = [
    "env=multi_agent",
    "agent=mappo",
    "agent.total_frames=1024",
    "agent.frames_per_batch=512",
    "agent.minibatch_size=256",
    "agent.progress=false",
    "env.num_envs=8",
    "env.episode_length=64",
]


def _multi(df, E, K, impact: Impact | None = None, rules=RULES, start=40):
    market = MultiMarket(df, feature_columns(df), E, K, 16, rules, impact or Impact())
    market.reset(start=start)
    return market


def test_with_impact_off_every_agent_trades_exactly_like_the_single_agent_kernel(market_df):
    E, K = 3, 4
    multi = _multi(market_df, E, K)
    single = VectorMarket(market_df, feature_columns(market_df), E * K, 16, RULES)
    single.reset(start=40)
    targets = np.random.default_rng(0).choice([-2.0, -1.0, 0.0, 0.5, 1.0, 2.0], size=(300, E * K))
    for row in targets:
        multi.step(row)
        single.step(row)
        for name in ("cash", "units", "requested", "equity", "reward"):
            assert np.array_equal(getattr(multi, name), getattr(single, name)), name
        assert np.array_equal(multi.account[:, :2], single.account)
        assert np.array_equal(np.repeat(multi.obs, K, axis=0), single.obs)
        assert np.array_equal(multi.traded, single.fills[:, kernels.ENTRY_UNITS])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), eta=st.floats(0, 0.5), gamma=st.floats(0, 0.1), agents=st.integers(1, 5))
def test_total_equity_change_is_mark_to_market_minus_fees_and_impact(market_df, seed, eta, gamma, agents):
    """Per bar: sum of equity changes = sum of units x the (impacted) price moves - fees -
    fixed slippage - temporary impact paid, to float precision."""
    market = _multi(market_df, 2, agents, Impact(eta, gamma))
    rng = np.random.default_rng(seed)
    opens, closes = market.bars[:, kernels.OPEN], market.bars[:, kernels.CLOSE]
    for _ in range(60):
        units, equity, level, t = market.units.copy(), market.equity.copy(), market.level.copy(), market.t.copy()
        market.step(rng.uniform(-2, 2, size=2 * agents))
        for e in range(2):
            rows = slice(e * agents, (e + 1) * agents)
            previous_close, fill_open = closes[t[e]] * level[e], opens[t[e] + 1] * level[e]
            close = closes[t[e] + 1] * market.level[e]
            moved = (units[rows] * (fill_open - previous_close) + market.units[rows] * (close - fill_open)).sum()
            costs = market.paid[rows, [FEE_PAID, SLIPPAGE_PAID, IMPACT_PAID]].sum()
            assert (market.equity[rows] - equity[rows]).sum() == pytest.approx(moved - costs, abs=1e-12, rel=1e-9)
        assert (market.paid[:, IMPACT_PAID].reshape(2, agents).sum(axis=1) >= -1e-15).all()  # the flow pays


def test_nothing_decided_or_filled_up_to_t_plus_1_sees_bars_after_t(market_df):
    t_cut = 80
    later = market_df.copy()
    rng = np.random.default_rng(1)
    after = later.index[t_cut + 1 :]
    for column in ["$high", "$low", "$close", "$volume", *feature_columns(market_df)]:
        later.loc[after, column] = later.loc[after, column].to_numpy() * rng.uniform(0.5, 1.5, len(after))
    later["$high"] = later[["$open", "$high", "$low", "$close"]].max(axis=1)
    later["$low"] = later[["$open", "$high", "$low", "$close"]].min(axis=1)
    a, b = (_multi(df, 2, 3, Impact(0.3, 0.05)) for df in (market_df, later))
    targets = np.random.default_rng(2).uniform(-2, 2, size=(t_cut - 40 + 1, 6))
    for k, row in enumerate(targets):
        before = {name: getattr(a, name).copy() for name in ("obs", "account")}
        assert all(np.array_equal(before[n], getattr(b, n)) for n in before), k  # what was observed
        a.step(row)
        b.step(row)
        for name in ("traded", "paid", "cash", "units", "level", "flow"):  # the fill at t+1's open
            assert np.array_equal(getattr(a, name), getattr(b, name)), (name, k)
        if a.t[0] <= t_cut:
            assert np.array_equal(a.equity, b.equity)


def test_opposite_orders_net_out_and_pay_no_impact(market_df):
    rules = MarketRules(transaction_fee=0.001, slippage_bps=0.0, max_leverage=1.0, capital=1e6)
    market = _multi(market_df, 1, 2, Impact(temporary=1.0, permanent=0.5), rules)
    market.step(np.array([1.0, -1.0]))
    assert market.traded[0] == -market.traded[1] != 0.0
    assert market.paid[:, IMPACT_PAID].tolist() == [0.0, 0.0] and market.level[0] == 1.0
    alone = _multi(market_df, 1, 2, Impact(temporary=1.0, permanent=0.5), rules)
    alone.step(np.array([1.0, 0.0]))
    assert alone.paid[0, IMPACT_PAID] > 0 and alone.level[0] > 1.0  # the same order, unopposed


def test_crowding_into_the_same_trade_earns_each_agent_less_than_trading_alone(market_df):
    """K agents following the same momentum rule under strong impact each end with less than one
    agent following it alone: the impact is paid, not decorative."""
    strong = Impact(temporary=0.5, permanent=0.05)
    returns = {}
    for agents in (1, 4):
        market = _multi(market_df, 1, agents, strong)
        closes = market.bars[:, kernels.CLOSE]
        for _ in range(300):
            t = market.t[0]
            momentum = 1.0 if closes[t] > closes[t - 1] else 0.0
            market.step(np.full(agents, momentum))
        returns[agents] = market.equity - 1.0
    assert np.allclose(returns[4], returns[4][0])  # identical agents, identical fate
    assert returns[4][0] < returns[1][0] - 0.01


def test_the_torchrl_env_has_nested_agent_keys_and_passes_check_env_specs(market_df):
    cfg = compose_config(
        TINY
        + [
            "env.agents=[{role: learner}, {role: learner}, {role: buy_and_hold},"
            " {role: sma_cross, fast: 5, slow: 20}, {name: noise, role: random}]"
        ]
    )
    env = registry.build("env", cfg.env, market_df, seed=0)
    check_env_specs(env)
    assert env.group_map == {"agents": ["agent_0", "agent_1"]}
    assert env.names == ["agent_0", "agent_1", "agent_2", "agent_3", "noise"]
    td = env.rollout(5)
    assert td["next", "agents", "reward"].shape == (8, 5, 2, 1)
    assert td["agents", "observation"].shape[-2:] == (32, len(feature_columns(market_df)))
    assert (env.market.units.reshape(8, 5)[:, 2] > 0).all()  # buy-and-hold is long


@pytest.mark.parametrize("name", ["mappo", "ippo"])
def test_multi_agent_ppo_trains_the_same_way_twice(name, market_df):
    cfg = compose_config(TINY + [f"agent={name}"])
    weights = []
    for _ in range(2):
        env = registry.build("env", cfg.env, market_df, seed=0)
        agent = registry.build("agent", cfg.agent, env, seed=0)
        curve = []
        agent.fit(env, lambda m, step, curve=curve: curve.append(m))
        weights.append([p.detach().clone() for p in agent.actor.parameters()])
        assert len(curve) == 2 and curve[-1]["perf/frames_per_second"] > 0
    assert all(torch.equal(a, b) for a, b in zip(*weights))
    td = env.reset()
    assert agent.act(td["agents", "observation"], td["agents", "account"]).shape == (8, 4)


def test_a_multi_agent_run_needs_a_multi_agent_learner():
    from src.config_checks import ConfigError
    from src.run import check_config

    with pytest.raises(ConfigError, match="trains agent=mappo or agent=ippo"):
        check_config(compose_config(["env=multi_agent", "agent=ppo"]))
    with pytest.raises(ConfigError, match="need env=multi_agent"):
        check_config(compose_config(["agent=mappo"]))


@pytest.mark.slow
def test_mappo_beats_random_learners_on_a_planted_signal_market(tmp_path, monkeypatch):
    from src.run import run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store(tmp_path))
    cfg = compose_config(
        [
            "experiment=planted_signal",
            "env=multi_agent",
            "agent=mappo",
            "env.num_agents=2",
            "agent.total_frames=65536",
            "agent.progress=false",
        ]
    )
    run(cfg, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    learners = [summary[f"agent_{k}"]["sharpe"] for k in range(2)]
    assert min(learners) > summary["random_learners"]["sharpe"] + 1.0


@pytest.mark.slow
def test_the_multi_agent_experiment_runs_from_the_readme(tmp_path):
    result = run_cli(tmp_path, "experiment=multi_agent", f"hydra.run.dir={tmp_path}/out", "agent.total_frames=4096")
    assert "Market: what the agents' flow did to the price" in result.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {"agent_0", "agent_1", "agent_2", "hold", "trend", "market", "random_learners"} <= set(summary)
    assert summary["hold"]["learner"] == 0.0 and summary["agent_0"]["learner"] == 1.0
    equity = pd.read_csv(tmp_path / "out" / "equity.csv", index_col=0)
    assert {"agent_0", "hold", "exogenous", "traded"} <= set(equity.columns)
    [run] = runs(tmp_path)
    assert "test/sharpe" in run.data.metrics and "test/market/price_impact" in run.data.metrics


def test_an_interrupted_multi_agent_training_resumes_to_the_same_result_bit_for_bit(market_df, tmp_path):
    """MAPPO's training checkpoints hold the markets' and the fixed strategies' state (a random
    trader's generator here): interrupt at the third iteration, resume, and every logged figure
    and the final weights equal an uninterrupted run's."""
    cfg = compose_config(
        TINY
        + [
            "agent.total_frames=2560",
            "agent.eval_every=2",
            "agent.checkpoint_every=1",
            "env.agents=[{role: learner}, {role: learner}, {name: noise, role: random}]",
        ]
    )
    score = lambda a: {"sharpe": float(sum(p.detach().sum() for p in a.actor.parameters()))}  # noqa: E731

    def fit(log, store):
        env = registry.build("env", cfg.env, market_df, seed=0)
        agent = registry.build("agent", cfg.agent, env, seed=0)
        agent.fit(env, log, evaluate=score, checkpoints=store)
        return agent

    whole_log = []
    whole = fit(lambda m, step: whole_log.append((step, m)), TrainingCheckpoints(tmp_path / "whole"))
    store, cut_log = TrainingCheckpoints(tmp_path / "cut"), []

    def interrupt_at_the_third_iteration(metrics, step):
        if step == 3 * 512:
            raise KeyboardInterrupt
        cut_log.append((step, metrics))

    with pytest.raises(TrainingInterrupted) as stopped:
        fit(interrupt_at_the_third_iteration, store)
    assert stopped.value.checkpoint == store.path and store.load()["iteration"] == 2
    cfg.agent.resume = True
    resumed = fit(lambda m, step: cut_log.append((step, m)), store)

    deterministic = lambda m: {k: v for k, v in m.items() if not k.startswith("perf/")}  # noqa: E731
    assert len(whole_log) == 6
    assert [(s, deterministic(m)) for s, m in cut_log] == [(s, deterministic(m)) for s, m in whole_log]
    for mine, theirs in zip(resumed.actor.state_dict().values(), whole.actor.state_dict().values()):
        assert torch.equal(mine, theirs)
