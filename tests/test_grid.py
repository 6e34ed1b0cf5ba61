"""mode=grid: a rule strategy's grid as N envs of one kernel call, each cell its own backtest."""

import json

import pandas as pd
import pytest

from src import registry
from src.backtest.grid import combinations
from src.backtest.sizing import with_risk_columns
from tests.conftest import compose_config, mlflow_store, runs


@pytest.mark.parametrize("backtest", ["default", "risk_managed"])
def test_every_grid_cell_equals_the_single_backtest_of_its_combination(backtest, market_df):
    cfg = compose_config(
        ["agent=sma_cross", f"backtest={backtest}", "grid.params.fast=[3,8,20]", "grid.params.slow=[8,30,60]"]
    )
    df = with_risk_columns(market_df.iloc[:1200], cfg.backtest)
    env = registry.build("env", cfg.env, df, seed=0)
    backtester = registry.build("backtest", cfg.backtest, cfg.env, env.actions)
    cells = combinations(cfg, env)
    assert [tuple(p.values()) for p, _ in cells] == [(3, 8), (3, 30), (3, 60), (8, 30), (8, 60), (20, 30), (20, 60)]
    targets = pd.concat(
        [pd.Series(env.actions.to_targets(a.signals(df)).reshape(-1)) for _, a in cells], axis=1
    ).to_numpy()
    together = backtester.run_targets(targets, df)  # one kernel call over every bar for all cells
    ranked = backtester.target_metrics(targets, df)  # what the grid ranks by, from the same walk
    for j, ((params, agent), cell) in enumerate(zip(cells, together)):
        alone = backtester.run(agent, df)
        # the bar-by-bar walk an agent acting on observations gets: one kernel step per bar
        stepped = backtester._walk(df, lambda bar, market, j=j: targets[bar, j : j + 1], close_at_end=True)
        for other in (alone, stepped):
            pd.testing.assert_series_equal(cell.equity, other.equity, check_exact=True)
            pd.testing.assert_frame_equal(cell.trades, other.trades, check_exact=True)
            pd.testing.assert_series_equal(cell.financing, other.financing, check_exact=True)
            assert cell.metrics == other.metrics and len(other.trades) > 0, params
        assert ranked[j] == pytest.approx(cell.metrics, rel=1e-12, abs=1e-15), params


def test_a_grid_needs_a_rule_agent(market_df):
    from src.config_checks import ConfigError

    cfg = compose_config(["agent=buy_and_hold"])
    with pytest.raises(ConfigError, match="mode=grid needs a rule agent"):
        combinations(cfg, registry.build("env", cfg.env, market_df, seed=0))


def test_grid_mode_selects_on_validation_and_reports_test_separately(tmp_path, monkeypatch, capsys):
    from src.run import run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store(tmp_path))
    out = tmp_path / "out"
    run(
        compose_config(
            [
                "mode=grid",
                "agent=sma_cross",
                "grid.params.fast=[5,20]",
                "grid.params.slow=[50,100,200]",
                "data.n_bars=4000",
            ]
        ),
        out,
    )
    assert "Grid: top 6 of 6 by val_sharpe" in capsys.readouterr().out
    grid = pd.read_csv(out / "grid.csv")
    assert len(grid) == 6 and grid["val_sharpe"].is_monotonic_decreasing
    best = json.loads((out / "grid_best.json").read_text())
    assert best["params"] == {"fast": int(grid.iloc[0]["fast"]), "slow": int(grid.iloc[0]["slow"])}
    assert best["validation"]["sharpe"] == pytest.approx(grid.iloc[0]["val_sharpe"])
    assert (out / "plots" / "grid_heatmap.png").stat().st_size > 5000
    [run] = runs(tmp_path)
    assert run.data.params["grid.best.fast"] == str(best["params"]["fast"])
    assert run.data.metrics["test/sharpe"] == pytest.approx(best["test"]["sharpe"])
    assert run.data.metrics["grid/combinations"] == 6
