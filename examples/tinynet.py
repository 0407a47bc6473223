"""A module of your own for `runner model=module` (see the README): run from this directory,
`runner model=module model.target=tinynet.TinyNet model.kwargs={hidden:8} loop=autograd
optimizer=adam optimizer.lr=0.1`."""

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, n_features: int = 1, hidden: int = 8) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(n_features, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x):  # x: (N, n_features) -> (N, 1)
        return self.layers(x)
