"""Agents; ``src.registry`` imports them for a lookup."""
