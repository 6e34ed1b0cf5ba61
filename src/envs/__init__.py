"""Trading envs; importing registers them."""
from src.envs import torchrl_env  # noqa: F401
