"""Trading envs; ``src.registry`` imports them for a lookup."""
