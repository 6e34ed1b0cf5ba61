"""Feature sets; ``src.registry`` imports them for a lookup."""
