"""Networks over the observation window; the (window, features) matrix is flattened only here."""
import torch
from torch import nn


class WindowMLP(nn.Module):
    """MLP over [flatten(market), account] -> ``out_dim``.

    market: (..., window_size, n_features); account: (..., 2); output: (..., out_dim).
    """

    def __init__(self, window_size: int, n_features: int, n_account: int,
                 hidden_sizes: list[int], out_dim: int):
        super().__init__()
        layers, width = [], window_size * n_features + n_account
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, market: torch.Tensor, account: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([market.flatten(-2), account], dim=-1))
