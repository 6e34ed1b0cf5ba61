"""Scenario injectors; importing registers them."""
from src.scenarios import injectors  # noqa: F401
