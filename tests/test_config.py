"""Every option of every config group composes and builds through the registry."""

from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException

from src import registry
from src.config_checks import ConfigError
from src.data.synthetic import synthetic_ohlcv
from src.data.validate import validate_ohlcv
from src.scenarios import apply_scenarios
from tests.conftest import ROOT, compose_config
from tests.fake_exchange import FakeBinance


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


def group_options() -> list[tuple[str, str]]:
    return [(group, option) for group in registry.GROUPS for option in options(group)]


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "bars.csv"
    df = synthetic_ohlcv(600, seed=1)
    df.columns = [c.lstrip("$") for c in df.columns]
    df.rename_axis("timestamp").to_csv(path)
    return path


def build_all(cfg, market_df):
    """Build one component of every group from ``cfg``."""
    registry.build("resources", cfg.resources)
    raw = registry.build("data", cfg.data)
    assert list(raw.columns[:5]) == ["$open", "$high", "$low", "$close", "$volume"]
    features = registry.build("features", cfg.features)(raw)
    assert all(c.startswith("$") for c in features.columns)
    env = registry.build("env", cfg.env, market_df, seed=0, num_envs=4)
    agent = registry.build("agent", cfg.agent, env, seed=0)
    td = env.reset()
    if hasattr(agent, "signals"):  # fixed-signal agents act on bars, not observations
        assert env.action_spec.is_in(agent.signals(market_df)[-4:])
    elif "agents" in td.keys():  # the multi-agent market: one action per learner
        actions = agent.act(td["agents", "observation"], td["agents", "account"])
        assert env.full_action_spec["agents", "action"].is_in(actions)
    else:
        actions = agent.act(td["market"], td["account"])
        assert env.action_spec.is_in(actions)
    registry.build("backtest", cfg.backtest, cfg.env, env.actions)
    stressed, _ = apply_scenarios(raw, len(raw) // 4, cfg.scenario)
    validate_ohlcv(stressed[list(raw.columns[:5])])


@pytest.fixture(scope="module")
def exchange():
    with FakeBinance() as server:
        yield server


def data_overrides(option: str, csv_file: Path, exchange: FakeBinance, tmp_path: Path) -> list[str]:
    """Keep every data option small and offline (exchanges: the loopback server)."""
    if option == "csv":
        return [f"data.path={csv_file}"]
    if option == "ccxt" or option.startswith("binance"):
        return [
            f"data.base_url={exchange.url}",
            f"data.cache_dir={tmp_path}",
            "data.start=2024-01-01",
            "data.end=2024-02-01",
        ]
    return ["data.n_bars=600"] if option == "synthetic" else []


PARTNERS = {
    ("env", "multi_agent"): ["agent=mappo"],
    ("agent", "mappo"): ["env=multi_agent"],
    ("agent", "ippo"): ["env=multi_agent"],
}  # options that only make sense together


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_group_option_composes_and_builds(group, option, csv_file, market_df, exchange, tmp_path):
    extra = data_overrides(option, csv_file, exchange, tmp_path) if group == "data" else ["data.n_bars=600"]
    cfg = compose_config([f"{group}={option}", *extra, *PARTNERS.get((group, option), [])])
    registry.validate(cfg)
    if cfg.resources.device.startswith("cuda") and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
            build_all(cfg, market_df)
        return
    build_all(cfg, market_df)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml")))
def test_every_experiment_composes(experiment, market_df):
    cfg = compose_config([f"experiment={experiment}"])
    registry.validate(cfg)
    build_all(cfg, market_df)


def test_experiment_overrides_defaults():
    cfg = compose_config(["experiment=quick"])
    assert cfg.data.n_bars == 3000 and cfg.agent.total_frames == 16384


def test_unknown_component_name_lists_valid_names():
    cfg = compose_config(["agent.name=sac"])
    with pytest.raises(registry.UnknownComponentError) as error:
        registry.validate(cfg)
    message = str(error.value)
    assert "'sac'" in message and all(name in message for name in ("buy_and_hold", "ppo", "mappo", "random"))


def test_scenarios_compose_in_order():
    cfg = compose_config(["scenario=[flash_crash,low_liquidity]", "scenario.flash_crash.drop=0.5"])
    assert list(cfg.scenario) == ["flash_crash", "low_liquidity"] and cfg.scenario.flash_crash.drop == 0.5
    assert cfg.run_name == "ppo-flash_crash+low_liquidity"
    registry.validate(cfg)


def test_unknown_config_option_lists_options():
    with pytest.raises(MissingConfigException, match="buy_and_hold"):
        compose_config(["agent=sac"])
    with pytest.raises(MissingConfigException, match="quick"):
        compose_config(["experiment=nope"])
