"""Trading envs; importing registers them."""

from src.envs import multi_agent_env, torchrl_env  # noqa: F401
