"""Agents; importing registers them."""
from src.agents import baselines, ppo  # noqa: F401
