"""Networks over the observation window; the (window, features) matrix is flattened only here.

Every network maps market (..., window_size, n_features) and account (..., 2) to (..., out_dim).
"""

import torch
from torch import nn


class _Head(nn.Module):
    """MLP over [x, account]; the first layer is split so the inputs are never concatenated
    (W [x; a] = W_x x + W_a a, without copying the wide ``x``)."""

    def __init__(self, width: int, hidden_sizes: list[int], out_dim: int):
        super().__init__()
        first, *rest = list(hidden_sizes) + [out_dim]
        self.x_in, self.account_in = nn.Linear(width, first), nn.Linear(2, first, bias=False)
        layers, width = [], first
        for hidden in rest:
            layers += [nn.Tanh(), nn.Linear(width, hidden)]
            width = hidden
        self.rest = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        return self.rest(self.x_in(x) + self.account_in(account))


class WindowMLP(nn.Module):
    """MLP over [flatten(market), account]."""

    def __init__(self, window_size: int, n_features: int, hidden_sizes: list[int], out_dim: int, **_):
        super().__init__()
        self.head = _Head(window_size * n_features, hidden_sizes, out_dim)

    def forward(self, market: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        return self.head(market.flatten(-2), account)


class WindowConv1d(nn.Module):
    """Two 1-D convolutions along time (features as channels), then an MLP head with account."""

    def __init__(
        self,
        window_size: int,
        n_features: int,
        hidden_sizes: list[int],
        out_dim: int,
        channels: int = 16,
        kernel_size: int = 5,
    ):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(n_features, channels, kernel_size, padding=kernel_size // 2),
            nn.Tanh(),
            nn.Conv1d(channels, channels, kernel_size, stride=2, padding=kernel_size // 2),
            nn.Tanh(),
        )
        self.head = _Head(channels * ((window_size + 1) // 2), hidden_sizes, out_dim)

    def forward(self, market: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        batch = market.shape[:-2]
        x = market.reshape(-1, *market.shape[-2:]).transpose(-1, -2)  # (B, features, window)
        return self.head(self.conv(x).flatten(-2).reshape(*batch, -1), account)


NETWORKS = {"mlp": WindowMLP, "conv1d": WindowConv1d}


def build_network(
    name: str, window_size: int, n_features: int, hidden_sizes: list[int], out_dim: int, **kwargs
) -> nn.Module:
    if name not in NETWORKS:
        raise ValueError(f"agent.network={name!r}; valid: {', '.join(NETWORKS)}")
    return NETWORKS[name](window_size, n_features, list(hidden_sizes), out_dim, **kwargs)
