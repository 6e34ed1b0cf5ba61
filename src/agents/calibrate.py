"""``resources=auto``: a short probe picks ``env.num_envs`` and ``agent.minibatch_size``.

Each candidate pair (``resources.calibrate``) trains PPO for a few iterations of ``num_envs x
steps`` frames on the run's train split and is timed after one warm-up iteration; pairs whose
estimated memory exceeds ``resources.memory_limit_gb`` are skipped. The fastest pair is used (the
rollout length per env, ``agent.frames_per_batch / env.num_envs``, is kept) and the probe table is
printed and logged to MLflow. Pin a value by giving its list one element.
"""

import time

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from src import registry
from src.envs.torchrl_env import feature_columns
from src.resources import Compute

PROBE_STEPS = 16  # env steps per iteration in the probe (the run keeps its own rollout length)
BYTES_PER_FRAME_FACTOR = 6  # copies of a frame alive in one iteration (rollout, next, buffer, GAE, grads)


def estimated_gb(frames_per_batch: int, window: int, n_features: int) -> float:
    """Memory of one PPO iteration's frames: observation floats x copies alive at once."""
    return frames_per_batch * (window * n_features + 8) * 4 * BYTES_PER_FRAME_FACTOR / 1024**3


def calibrated(cfg: DictConfig, train_df: pd.DataFrame, compute: Compute) -> tuple[DictConfig, dict]:
    """(the config with the fastest num_envs and minibatch_size, the probe table as columns)."""
    probe = cfg.resources.calibrate
    steps = max(cfg.agent.frames_per_batch // cfg.env.num_envs, 1)
    rows = []
    for num_envs in probe.num_envs:
        for minibatch in probe.minibatch_size:
            run_frames = num_envs * steps
            row = {
                "num_envs": num_envs,
                "minibatch_size": minibatch,
                "frames_per_second": None,
                "estimated_gb": estimated_gb(run_frames, cfg.env.window_size, len(feature_columns(train_df))),
                "note": "",
            }
            if run_frames % minibatch or minibatch > num_envs * PROBE_STEPS:
                row["note"] = "minibatch does not divide the batch"
            elif row["estimated_gb"] > cfg.resources.memory_limit_gb:
                row["note"] = f"over memory_limit_gb={cfg.resources.memory_limit_gb}"
            else:
                row["frames_per_second"] = _probe(cfg, train_df, compute, num_envs, minibatch, probe.iterations)
            rows.append(row)
    timed = [r for r in rows if r["frames_per_second"] is not None]
    if not timed:
        raise ValueError(
            "resources.calibrate: no candidate fits; widen num_envs/minibatch_size or raise resources.memory_limit_gb"
        )
    best = max(timed, key=lambda r: r["frames_per_second"])
    best["note"] = "chosen"
    Console(stderr=True).print(_table(rows))
    tuned = cfg.copy()
    OmegaConf.update(tuned, "env.num_envs", best["num_envs"])
    OmegaConf.update(tuned, "agent.frames_per_batch", best["num_envs"] * steps)
    OmegaConf.update(tuned, "agent.minibatch_size", best["minibatch_size"])
    return tuned, {key: [r[key] for r in rows] for key in rows[0]}


def _probe(cfg, train_df, compute, num_envs: int, minibatch: int, iterations: int) -> float:
    """Training frames/s of PPO after one warm-up iteration."""
    agent_cfg = cfg.agent.copy()
    agent_cfg.frames_per_batch = num_envs * PROBE_STEPS
    agent_cfg.minibatch_size = minibatch
    agent_cfg.total_frames = agent_cfg.frames_per_batch * (iterations + 1)
    agent_cfg.progress = False
    env = registry.build("env", cfg.env, train_df, seed=cfg.seed, num_envs=num_envs)
    agent = registry.build("agent", agent_cfg, env, seed=cfg.seed)
    stamps = []
    agent.fit(env, lambda metrics, frames: stamps.append((time.perf_counter(), frames)), compute=compute)
    (start, first), (end, last) = stamps[0], stamps[-1]
    return (last - first) / max(end - start, 1e-9)


def _table(rows: list[dict]) -> Table:
    table = Table(title="resources=auto: PPO frames/s per candidate")
    for column in ("num_envs", "minibatch", "frames/s", "est. GB", "note"):
        table.add_column(column, justify="left" if column == "note" else "right")
    for r in rows:
        rate = "-" if r["frames_per_second"] is None else f"{r['frames_per_second']:,.0f}"
        table.add_row(str(r["num_envs"]), str(r["minibatch_size"]), rate, f"{r['estimated_gb']:.2f}", r["note"])
    return table
