"""Agents; importing registers them."""

from src.agents import baselines, mappo, ppo  # noqa: F401
