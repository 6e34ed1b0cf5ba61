"""Walk-forward folds and stitching, PSR/DSR against published values, multi-seed aggregates."""

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from src.backtest.metrics import deflated_sharpe, expected_max_sharpe, probabilistic_sharpe
from src.config_checks import ConfigError
from src.seeds import aggregate, with_sweep_overrides
from src.walk_forward import fold_bounds, stitch
from tests.conftest import compose_config, mlflow_store, runs


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(300, 100_000),
    folds=st.integers(1, 12),
    train=st.floats(0.2, 0.8),
    validation=st.floats(0.02, 0.3),
    expanding=st.booleans(),
)
def test_folds_are_in_time_order_and_no_test_bar_is_seen_before_it_is_tested(n, folds, train, validation, expanding):
    if train + validation >= 0.97:
        return
    try:
        bounds = fold_bounds(n, folds, train, validation, expanding)
    except ConfigError as error:  # refused when a segment would be empty; more data cures it
        assert "too few bars per fold" in str(error)
        bounds = fold_bounds(n * 100, folds, train, validation, expanding)
        n *= 100
    assert len(bounds) == folds and bounds[-1].end == n
    for k, fold in enumerate(bounds):
        # training, then selection, then test, each strictly before the next
        assert 0 <= fold.train < fold.validation < fold.test < fold.end <= n
        if k:
            previous = bounds[k - 1]
            assert fold.test == previous.end  # test segments tile the end of the data, no overlap
            assert fold.validation >= previous.validation and fold.train >= previous.train
        if expanding:
            assert fold.train == 0
        else:
            assert fold.test - fold.train == bounds[0].test - bounds[0].train  # a rolling window


def test_the_stitched_curve_is_the_folds_curves_chained():
    rng = np.random.default_rng(0)
    index = pd.date_range("2024", periods=31, freq="D")
    segments = [
        pd.Series(1000 * np.cumprod(1 + rng.normal(0, 0.01, 11)), index=index[10 * k : 10 * k + 11]) for k in range(3)
    ]
    stitched = stitch(segments)
    assert stitched.index.equals(index) and stitched.iloc[0] == segments[0].iloc[0]
    chained = np.concatenate([s.pct_change().dropna().to_numpy() for s in segments])
    assert np.allclose(stitched.pct_change().dropna().to_numpy(), chained, rtol=0, atol=1e-14)
    assert stitched.iloc[-1] == pytest.approx(
        segments[0].iloc[0] * np.prod([s.iloc[-1] / s.iloc[0] for s in segments]), rel=1e-12
    )


def test_deflated_sharpe_matches_the_worked_example_of_bailey_and_lopez_de_prado_2014():
    """Bailey & Lopez de Prado (2014), "The Deflated Sharpe Ratio", J. Portfolio Management 40(5),
    numerical example: N = 100 trials with an annualised Sharpe variance of 0.5, 250 days a year,
    give E[max SR] = 0.1132 per day; a selected annualised SR of 2.5 over T = 1250 daily returns
    with skewness -3 and kurtosis 10 has DSR = 0.9004."""
    sr0 = expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=1e-4)
    dsr = probabilistic_sharpe(2.5 / np.sqrt(250), 1250, -3.0, 10.0, benchmark=sr0)
    assert dsr == pytest.approx(0.9004, abs=5e-4)


def test_probabilistic_sharpe_by_hand():
    """Bailey & Lopez de Prado (2012), "The Sharpe Ratio Efficient Frontier", eq. for PSR: for
    normal returns (skew 0, kurtosis 3), SR = 0.1 per period over n = 101 returns,
    PSR(0) = Phi(0.1 x 10 / sqrt(1 + 0.01 / 2)) = Phi(0.99751) = 0.84074 (by hand)."""
    assert probabilistic_sharpe(0.1, 101, 0.0, 3.0) == pytest.approx(0.84074, abs=1e-5)
    assert probabilistic_sharpe(0.1, 101, 0.0, 3.0, benchmark=0.1) == 0.5
    # negative skew and fat tails widen the estimate's error: less confidence than normal returns
    assert probabilistic_sharpe(0.1, 101, -2.0, 9.0) < probabilistic_sharpe(0.1, 101, 0.0, 3.0)
    one_trial = deflated_sharpe(0.1, 101, 0.0, 3.0, [0.1])
    assert one_trial["expected_max_sharpe"] == 0.0 and one_trial["dsr"] == pytest.approx(0.84074, abs=1e-5)


def _metrics(sharpe: float) -> dict:
    return {
        "sharpe": sharpe,
        "sharpe_per_period": sharpe / 90,
        "n_returns": 1000.0,
        "skewness": 0.1,
        "kurtosis": 4.0,
        "total_return": sharpe / 10,
    }


def test_seed_aggregates_are_repeatable_and_their_intervals_contain_the_mean():
    per_seed = [_metrics(s) for s in (0.5, 1.5, -0.2, 2.0, 0.9)]
    hold = [_metrics(s) for s in (1.0, 1.0, 1.0, 1.0, 1.0)]
    first, again = aggregate(per_seed, hold, seed=7), aggregate(per_seed, hold, seed=7)
    assert first == again
    for key in ("sharpe", "total_return"):
        s = first[key]
        assert s["ci_low"] <= s["mean"] <= s["ci_high"] and s["std"] == pytest.approx(
            np.std([m[key] for m in per_seed], ddof=1)
        )
    assert first["beat_buy_and_hold"] == 0.4  # 1.5 and 2.0 beat 1.0
    dsr = first["deflated_sharpe"]
    assert dsr["trials"] == 5 and dsr["sharpe_per_period"] == 2.0 / 90 and 0 < dsr["dsr"] < 1


def test_from_sweep_applies_the_best_overrides(tmp_path):
    (tmp_path / "optimization_results.yaml").write_text("best_overrides: ['agent.lr=0.002', 'env.window_size=16']\n")
    cfg = with_sweep_overrides(compose_config([f"+from_sweep={tmp_path}"]))
    assert cfg.agent.lr == 0.002 and cfg.env.window_size == 16
    (tmp_path / "optimization_results.yaml").write_text("best_overrides: ['agent=ppo_conv']\n")
    with pytest.raises(Exception, match="a config group; pass agent=ppo_conv on the command line"):
        with_sweep_overrides(compose_config([f"+from_sweep={tmp_path}"]))


@pytest.mark.slow
def test_walk_forward_runs_folds_as_child_runs_and_stitches_them(tmp_path, monkeypatch, capsys):
    from src.run import job

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store(tmp_path))
    out = tmp_path / "out"
    job(
        compose_config(
            [
                "experiment=quick",
                "mode=walk_forward",
                "walk_forward.folds=3",
                "agent.total_frames=8192",
                "agent.progress=false",
                "backtest.plots=false",
            ]
        ),
        out,
    )
    printed = capsys.readouterr().out
    assert "Walk-forward: 3 folds (rolling)" in printed and "stitched" in printed
    report = json.loads((out / "walk_forward.json").read_text())
    tests = [row["test"].split("..") for row in report["folds"]]
    assert all(a[1] <= b[0] for a, b in zip(tests, tests[1:]))  # fold test segments in order
    stitched = pd.read_csv(out / "stitched.csv", index_col=0, parse_dates=True)["ppo"]
    folds = [pd.read_csv(out / f"fold{k}" / "equity.csv", index_col=0, parse_dates=True)["equity"] for k in range(3)]
    pd.testing.assert_series_equal(stitched, stitch(folds), check_names=False)
    assert report["stitched"]["ppo"]["total_return"] == pytest.approx(stitched.iloc[-1] / stitched.iloc[0] - 1)
    by_name = {r.info.run_name: r for r in runs(tmp_path)}
    parent = by_name["quick-ppo-walk-forward"]
    children = [r for r in by_name.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 and "walk_forward/ppo/psr_vs_buy_and_hold" in parent.data.metrics


@pytest.mark.slow
def test_seeds_find_a_planted_signal_and_only_chance_on_a_random_walk(tmp_path, monkeypatch):
    """Over 3 seeds PPO beats buy-and-hold on every planted-signal market (signal 0.3), and on a
    random walk (signal 0) it does not beat it everywhere: under chance (p = 1/2 per seed) all 3
    beating it has probability 1/8, the tolerance this test accepts as a false failure."""
    from src.run import job
    from src.seeds import run_seeds

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store(tmp_path))
    fractions = {}
    for signal in (0.3, 0.0):
        cfg = compose_config(
            [
                "experiment=planted_signal",
                f"data.signal={signal}",
                "data.n_bars=5000",
                "agent.total_frames=49152",
                "agent.progress=false",
                "backtest.plots=false",
                "seeds=3",
            ]
        )
        result = run_seeds(cfg, tmp_path / f"signal{signal}", job)
        fractions[signal] = result["seeds"]["beat_buy_and_hold"]
        assert (tmp_path / f"signal{signal}" / "seeds_equity.png").is_file()
    assert fractions[0.3] == 1.0
    assert fractions[0.0] < 1.0 and stats.binomtest(round(fractions[0.0] * 3), 3, 0.5).pvalue > 0.05
