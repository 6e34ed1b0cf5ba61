"""The rltrade dashboard (Streamlit + Plotly), a client of the HTTP API (``RLTRADE_API_URL``).

``streamlit run src/dashboard/app.py`` (``make dashboard``). Pages: Runs (table, filters, equity and
drawdown overlay, parameters side by side with differences highlighted), Run (metrics, charts,
fills on the equity curve, training curves, config), Sweeps (trials and parallel coordinates),
Stress (scenario x agent heatmap), Launch (options from the API's /configs, never a fixed list),
Paper (sessions, live equity), System (health and the API's Prometheus metrics). A view can be
linked: ``?page=Runs&compare=<run id>,<run id>``, ``?page=Run&run=<run id>``.
"""

import io
import os

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import requests
import streamlit as st

from src.backtest.metrics import rolling_sharpe
from src.data.timeframes import periods_per_year

API = os.environ.get("RLTRADE_API_URL", "http://127.0.0.1:8000").rstrip("/")
PAGES = ("Runs", "Run", "Sweeps", "Stress", "Launch", "Paper", "System")


def api(method: str, path: str, missing_ok: bool = False, **kwargs):
    """JSON from the API; a failure is shown on the page (never a traceback); ``missing_ok``: a
    404 is None, quietly."""
    token = os.environ.get("RLTRADE_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = requests.request(method, f"{API}{path}", headers=headers, timeout=30, **kwargs)
    except requests.ConnectionError:
        st.error(f"The API at {API} is not reachable: start it with `make serve`.")
        st.stop()
    if answer.status_code == 404 and missing_ok:
        return None
    if answer.status_code >= 400:
        st.error(f"{method} {path}: {answer.status_code} {answer.json().get('detail')}")
        return None
    return answer.json() if "json" in answer.headers.get("content-type", "") else answer.text


def curve(run_id: str, baseline: bool = False) -> pd.Series | None:
    """The run's equity curve (or, with ``baseline``, buy-and-hold's on the same bars)."""
    points = api("GET", f"/runs/{run_id}/equity", missing_ok=True)
    if not points or (baseline and points[0]["baseline"] is None):
        return None
    key = "baseline" if baseline else "value"
    return pd.Series([p[key] for p in points], index=pd.to_datetime([p["timestamp"] for p in points]))


def drawdown(equity: pd.Series) -> pd.Series:
    return equity / equity.cummax() - 1.0


def runs_page() -> None:
    st.header("Runs")
    configs = api("GET", "/configs")["groups"]
    columns = st.columns(3)
    agent = columns[0].selectbox("agent", ["(any)"] + configs["agent"])
    scenario = columns[1].selectbox("scenario", ["(any)"] + configs["scenario"])
    status = columns[2].selectbox("status", ["(any)", "FINISHED", "RUNNING", "FAILED", "KILLED"])
    params = {k: v for k, v in (("agent", agent), ("scenario", scenario), ("status", status)) if v != "(any)"}
    page = api("GET", "/runs", params={**params, "limit": 200})
    table = pd.DataFrame(page["runs"])
    st.caption(f"{page['total']} runs")
    if table.empty:
        return
    shown = [
        "name",
        "agent",
        "data",
        "scenario",
        "test_sharpe",
        "val_sharpe",
        "total_return",
        "max_drawdown",
        "trades",
        "seconds",
        "status",
        "run_id",
    ]
    st.dataframe(table[shown], hide_index=True, key="runs_table")
    linked = [r for r in st.query_params.get("compare", "").split(",") if r in set(table.run_id)]
    chosen = st.multiselect(
        "compare runs",
        table.run_id.tolist(),
        default=linked,
        format_func=lambda r: table.set_index("run_id").loc[r, "name"],
        key="compare",
    )
    if not chosen:
        return
    equity, under = go.Figure(), go.Figure()
    hold = curve(chosen[0], baseline=True)
    if hold is not None:  # buy-and-hold on the first run's test bars
        equity.add_scatter(x=hold.index, y=hold.values, name="buy_and_hold", line_dash="dash")
        under.add_scatter(x=hold.index, y=drawdown(hold).values, name="buy_and_hold", line_dash="dash")
    for run_id in chosen:
        series = curve(run_id)
        if series is not None:
            name = table.set_index("run_id").loc[run_id, "name"]
            equity.add_scatter(x=series.index, y=series.values, name=name)
            under.add_scatter(x=series.index, y=drawdown(series).values, name=name, fill="tozeroy")
    st.plotly_chart(equity.update_layout(title="Equity"), key="overlay_equity")
    st.plotly_chart(under.update_layout(title="Drawdown", yaxis_tickformat=".0%"), key="overlay_drawdown")
    params = pd.DataFrame({r: api("GET", f"/runs/{r}")["params"] for r in chosen})
    differs = params.nunique(axis=1, dropna=False) > 1
    st.subheader("Parameters (differences highlighted)")
    st.dataframe(
        params.style.apply(lambda row: ["background-color: #fff3b0" if differs[row.name] else "" for _ in row], axis=1),
        key="params_diff",
    )


def run_page() -> None:
    st.header("One run")
    run_id = st.text_input("run id", st.query_params.get("run", ""), key="run_id_input")
    if not run_id:  # the latest run with a test backtest
        rows = [r for r in api("GET", "/runs", params={"limit": 50})["runs"] if r["test_sharpe"] is not None]
        run_id = rows[0]["run_id"] if rows else ""
    if not run_id:
        st.info("No runs yet: `make run`.")
        return
    detail = api("GET", f"/runs/{run_id}")
    if detail is None:
        return
    st.subheader(detail["name"])
    metrics = {k: v for k, v in detail["metrics"].items() if k.startswith("test/")}
    st.dataframe(pd.Series(metrics, name="value"), key="run_metrics")
    series = curve(run_id)
    if series is not None:
        trades = pd.DataFrame(api("GET", f"/runs/{run_id}/trades", missing_ok=True) or [])
        summary = api("GET", f"/runs/{run_id}/artifacts/summary.json", missing_ok=True) or {}
        windows = summary.get("injected", [])  # the scenario's injected windows, shaded
        figure = go.Figure().add_scatter(x=series.index, y=series.values, name="equity")
        if not trades.empty:
            stamps = pd.to_datetime(trades.timestamp)
            marks = series.reindex(stamps, method="ffill")
            for side, symbol in (("buy", "triangle-up"), ("sell", "triangle-down")):
                chosen = trades.side == side
                figure.add_scatter(
                    x=stamps[chosen],
                    y=marks[chosen.to_numpy()].values,
                    mode="markers",
                    name=side,
                    marker_symbol=symbol,
                    marker_size=9,
                )
        charts = {
            "run_equity": figure.update_layout(title="Equity and fills"),
            "run_drawdown": px.area(drawdown(series), title="Drawdown"),
        }
        frame = api("GET", f"/runs/{run_id}/artifacts/equity.csv", missing_ok=True)
        if isinstance(frame, str) and "position" in frame.splitlines()[0]:
            positions = pd.read_csv(io.StringIO(frame), index_col=0, parse_dates=True)["position"]
            charts["run_position"] = px.line(positions, line_shape="hv", title="Position (fraction of equity)")
        configured = detail["params"].get("backtest.periods_per_year", "None")  # MLflow params are text
        periods = periods_per_year(series.index) if configured == "None" else float(configured)
        rolling, window = rolling_sharpe(series.pct_change().dropna(), periods)
        charts["run_rolling_sharpe"] = px.line(rolling, title=f"Rolling Sharpe ({window} bars)")
        for key, chart in charts.items():
            for first, last in windows:
                chart.add_vrect(x0=first, x1=last, fillcolor="orange", opacity=0.2, line_width=0)
            st.plotly_chart(chart, key=key)
        if not trades.empty:
            st.dataframe(trades, hide_index=True, key="run_trades")
    for key in ("train/reward_per_step", "train/loss_objective", "train/loss_critic", "val/sharpe"):
        history = api("GET", f"/runs/{run_id}/history/{key}", missing_ok=True) or []
        if len(history) > 1:
            steps = pd.Series([h["value"] for h in history], index=[int(h["timestamp"]) for h in history])
            st.plotly_chart(px.line(steps, title=f"{key} by frames trained"), key=f"run_{key}")
    with st.expander("config"):
        st.json(detail["params"])
    st.caption("artifacts (download):")
    st.markdown(" · ".join(f"[{name}]({API}/runs/{run_id}/artifacts/{name})" for name in detail["artifacts"]))


def pick(label: str, rows: list[dict]) -> str:
    """A run chosen by name among ``rows`` (API run rows); returns its id."""
    names = {r["run_id"]: r["name"] for r in rows}
    chosen = st.selectbox(label, list(names), format_func=lambda run_id: names[run_id], key=f"pick_{label}")
    return str(chosen)


def sweeps_page() -> None:
    st.header("Sweeps")
    parents = [r for r in api("GET", "/runs", params={"limit": 500})["runs"] if r["name"].startswith("sweep-")]
    if not parents:
        st.info("No sweeps yet: `python -m src.run --multirun experiment=ppo_sweep`.")
        return
    parent = pick("sweep", parents)
    sweep = api("GET", f"/sweeps/{parent}")
    metric = (sweep["metric"] or "val_sharpe").replace("val_", "val/")
    rows = [
        {**t["params"], metric: t["metrics"].get(metric), "status": t["status"], "run": t["name"]}
        for t in sweep["trials"]
    ]
    table = pd.DataFrame(rows)
    swept = [c for c in table.columns if table[c].nunique() > 1 and c not in (metric, "status", "run")]
    st.dataframe(table[["run", "status", metric, *swept]], hide_index=True, key="sweep_table")
    numeric = table[swept].apply(pd.to_numeric, errors="coerce").dropna(axis=1, how="all")
    if len(numeric.columns) and table[metric].notna().any():
        figure = px.parallel_coordinates(numeric.assign(**{metric: table[metric]}), color=metric)
        st.plotly_chart(figure, key="sweep_parallel")
    best = table.sort_values(metric, ascending=False).iloc[0]
    st.code("python -m src.run " + " ".join(f"{k}={best[k]}" for k in swept))


def stress_page() -> None:
    st.header("Stress tests")
    stressed = api("GET", "/runs", params={"mode": "stress", "limit": 200})["runs"]
    if not stressed:
        st.info("No stress runs yet: `python -m src.run mode=stress`.")
        return
    linked = [r for r in stressed if r["run_id"] == st.query_params.get("run")]
    run_id = pick("stress run", linked + [r for r in stressed if r not in linked])
    table = api("GET", f"/runs/{run_id}/stress")
    sharpe = pd.DataFrame({s: {a: m["sharpe"] for a, m in agents.items()} for s, agents in table.items()}).T
    st.plotly_chart(
        px.imshow(sharpe, text_auto=".2f", color_continuous_scale="RdYlGn", title="Sharpe by scenario and agent"),
        key="stress_heatmap",
    )
    st.markdown(
        "Equity under each scenario: "
        + " · ".join(f"[{s}]({API}/runs/{run_id}/artifacts/plots/{s}/equity.png)" for s in table)
    )


def launch_page() -> None:
    st.header("Launch")
    groups = api("GET", "/configs")["groups"]
    kind = st.selectbox("kind", ["run", "stress", "backtest", "paper"])
    chosen = {
        group: st.selectbox(group, ["(default)"] + options, key=f"launch_{group}")
        for group, options in groups.items()
        if options
    }
    overrides = st.text_input("overrides (space separated)", "", key="launch_overrides")
    if st.button("Start", key="launch_start"):
        body = {
            "kind": kind,
            "groups": {g: o for g, o in chosen.items() if o != "(default)"},
            "overrides": overrides.split(),
        }
        job = api("POST", "/jobs", json=body)
        if job:
            st.session_state["job"] = job["id"]
    if "job" in st.session_state:
        job = api("GET", f"/jobs/{st.session_state['job']}")
        st.write(f"job {job['id']}: **{job['status']}** {job['progress']}")
        st.code("\n".join(job["log_tail"][-15:]) or "(no output yet)")


def paper_page() -> None:
    st.header("Paper trading")
    sessions = api("GET", "/paper/sessions") or []
    if sessions:
        st.dataframe(pd.DataFrame(sessions), hide_index=True, key="paper_sessions")
        session = st.selectbox("session", [s["session"] for s in sessions], key="paper_session")
        live_equity(session)
    checkpoints = [
        r for r in api("GET", "/runs", params={"agent": "ppo", "limit": 50})["runs"] if r["test_sharpe"] is not None
    ]
    st.subheader("Start a session")
    choice = st.selectbox(
        "model (validation / test Sharpe)",
        ["buy_and_hold"] + [c["run_id"] for c in checkpoints],
        format_func=lambda r: (
            r
            if r == "buy_and_hold"
            else next(
                f"{c['name']} ({c['val_sharpe'] or 0:+.2f} / {c['test_sharpe']:+.2f})"
                for c in checkpoints
                if c["run_id"] == r
            )
        ),
        key="paper_model",
    )
    feed = st.selectbox("feed", ["replay", "ccxt"], key="paper_feed")
    if st.button("Start session", key="paper_start"):
        groups = {"feed": feed, **({"agent": "buy_and_hold"} if choice == "buy_and_hold" else {})}
        overrides = (
            []
            if choice == "buy_and_hold"
            else [f"agent.checkpoint={api('GET', f'/runs/{choice}')['artifact_dir']}/policy.pt"]
        )
        api("POST", "/jobs", json={"kind": "paper", "groups": groups, "overrides": overrides})


@st.fragment(run_every="2s")
def live_equity(session: str) -> None:
    """The session's equity, position and fills, redrawn every 2 s without a page reload."""
    text = api("GET", f"/paper/{session}/events", params={"follow": "false"}) or ""
    blocks = [b for b in text.strip().split("\n\n") if b]
    equity = pd.DataFrame([event_data(b) for b in blocks if "event: equity" in b])
    fills = pd.DataFrame([event_data(b) for b in blocks if "event: fill" in b])
    if equity.empty:
        st.info("No fills yet.")
        return
    equity.index = pd.to_datetime(equity.ts, unit="ms", utc=True)
    figure = go.Figure().add_scatter(x=equity.index, y=equity.equity, name="equity")
    if not fills.empty:
        stamps = pd.to_datetime(fills.ts, unit="ms", utc=True)
        figure.add_scatter(
            x=stamps, y=equity.equity.reindex(stamps, method="ffill"), mode="markers", name="fills", marker_size=8
        )
    st.plotly_chart(figure.update_layout(title=f"{session}: equity and fills"), key="paper_equity")
    lag = (pd.Timestamp.now(tz="UTC") - equity.index[-1]).total_seconds()
    latency = equity.latency_ms.dropna()
    st.caption(
        f"position {equity.position.iloc[-1]:+.2f}, equity {equity.equity.iloc[-1]:,.2f}, "
        f"{len(fills)} fills, last bar {equity.index[-1]:%Y-%m-%d %H:%M} (lag {lag:,.0f} s), "
        f"decision latency p50 {latency.median():.2f} ms / p99 {latency.quantile(0.99):.2f} ms"
    )


def event_data(block: str) -> dict:
    """The data of one server-sent event block."""
    import json

    return json.loads(next(line[6:] for line in block.splitlines() if line.startswith("data: ")))


def system_page() -> None:
    st.header("System")
    st.json(api("GET", "/health"))
    for run in api("GET", "/runs", params={"agent": "ppo", "limit": 1})["runs"]:
        speed = api("GET", f"/runs/{run['run_id']}/history/train/frames_per_second", missing_ok=True) or []
        if speed:
            st.metric(f"training frames/s ({run['name']})", f"{speed[-1]['value']:,.0f}")
        system = {k: v for k, v in api("GET", f"/runs/{run['run_id']}")["metrics"].items() if k.startswith("system/")}
        if system:  # MLflow's system metrics (CPU, memory, GPU where present), when the run logged them
            st.dataframe(pd.Series(system, name="last value"), key="system_resources")
        else:
            st.caption("This run logged no system metrics (MLflow system-metrics logging was off).")
    text = api("GET", "/metrics") or ""
    samples = [line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")]
    st.dataframe(pd.DataFrame(samples, columns=["metric", "value"]), hide_index=True, key="system_metrics")


def main() -> None:
    st.set_page_config(page_title="rltrade", layout="wide")
    linked = st.query_params.get("page", "Runs")  # ?page=Stress&run=...&compare=a,b: shareable views
    page = st.sidebar.radio("page", PAGES, index=PAGES.index(linked) if linked in PAGES else 0, key="page")
    {
        "Runs": runs_page,
        "Run": run_page,
        "Sweeps": sweeps_page,
        "Stress": stress_page,
        "Launch": launch_page,
        "Paper": paper_page,
        "System": system_page,
    }[page]()


main()
