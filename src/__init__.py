"""rltrade: honest, fast, reproducible RL trading research."""

from omegaconf import OmegaConf

# ${join_keys:${scenario}} -> "flash_crash+low_liquidity": names of a composable group's selection
OmegaConf.register_new_resolver("join_keys", lambda node: "+".join(node.keys()), replace=True)
