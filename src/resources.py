"""Compute resources of one run (the ``resources`` config group)."""
import torch

from src.registry import register


@register("resources", "local")
def apply_local(cfg) -> None:
    """Pin torch's intra-op threads (``num_threads``; null keeps torch's default)."""
    if cfg.device != "cpu":
        raise ValueError(f"resources.device={cfg.device!r}: only 'cpu' is supported by resources=local")
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
