"""Cases for mean-collapse: models that predict the mean (or worse), and one that learned the signal."""
import math

import torch
from torch import nn

from modeldoctor import Recipe, regression_subject, train


def sine_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=generator) * 2 - 1  # (n, 1) in [-1, 1]
    return x, 0.5 + 0.4 * torch.sin(math.pi * x)  # targets in [0.1, 0.9]


def subject(model: nn.Module, steps: int = 400):
    torch.manual_seed(0)
    built = regression_subject("sine", model, sine_data(512, 0), sine_data(128, 1), batch_size=32,
                               value_range=(0.0, 1.0), recipe=Recipe(lr=1e-2, steps=steps))
    train(built)
    return built


class Blind(nn.Module):
    """The input is multiplied by zero before it reaches the network: it can only learn the mean."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x * 0)


class Inverted(nn.Module):
    """A sign bug at evaluation time: the prediction is mirrored around 0.5, worse than the mean."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 1))

    def forward(self, x):
        y = self.net(x)
        return y if self.training else 1 - y


def case_blind_input():
    return subject(Blind())


def case_worse_than_mean():
    return subject(Inverted())


def case_mlp_on_sine():
    torch.manual_seed(0)
    return subject(nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)))
