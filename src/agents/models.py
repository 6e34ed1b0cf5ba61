"""Networks over the observation window; the (window, features) matrix is flattened only here.

Every network maps market (..., window_size, n_features) and account (..., 2) to (..., out_dim).
"""
import torch
from torch import nn


def _mlp(width: int, hidden_sizes: list[int], out_dim: int) -> nn.Sequential:
    layers = []
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.Tanh()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


class WindowMLP(nn.Module):
    """MLP over [flatten(market), account]."""

    def __init__(self, window_size: int, n_features: int, hidden_sizes: list[int], out_dim: int,
                 **_):
        super().__init__()
        self.net = _mlp(window_size * n_features + 2, hidden_sizes, out_dim)

    def forward(self, market: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([market.flatten(-2), account], dim=-1))


class WindowConv1d(nn.Module):
    """Two 1-D convolutions along time (features as channels), then an MLP head with account."""

    def __init__(self, window_size: int, n_features: int, hidden_sizes: list[int], out_dim: int,
                 channels: int = 16, kernel_size: int = 5):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(n_features, channels, kernel_size, padding=kernel_size // 2), nn.Tanh(),
            nn.Conv1d(channels, channels, kernel_size, stride=2, padding=kernel_size // 2), nn.Tanh(),
        )
        conv_width = channels * ((window_size + 1) // 2)
        self.head = _mlp(conv_width + 2, hidden_sizes, out_dim)

    def forward(self, market: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        batch = market.shape[:-2]
        x = market.reshape(-1, *market.shape[-2:]).transpose(-1, -2)  # (B, features, window)
        x = self.conv(x).flatten(-2).reshape(*batch, -1)
        return self.head(torch.cat([x, account], dim=-1))


NETWORKS = {"mlp": WindowMLP, "conv1d": WindowConv1d}


def build_network(name: str, window_size: int, n_features: int, hidden_sizes: list[int],
                  out_dim: int, **kwargs) -> nn.Module:
    if name not in NETWORKS:
        raise ValueError(f"agent.network={name!r}; valid: {', '.join(NETWORKS)}")
    return NETWORKS[name](window_size, n_features, list(hidden_sizes), out_dim, **kwargs)
