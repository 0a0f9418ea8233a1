"""Cases for overfit-batch: models that cannot memorise one batch, and one that can."""
import math

import torch
from torch import nn

from modeldoctor import Recipe, regression_subject


def sine_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=generator) * 2 - 1  # (n, 1) in [-1, 1]
    return x, 0.5 + 0.4 * torch.sin(math.pi * x)  # targets in [0.1, 0.9]


class ConstantModel(nn.Module):
    """Capacity bug: the input never reaches the output (a bias is all there is)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x):  # (B, 1) -> (B, 1)
        return self.bias.expand(x.shape[0], 1)


class DetachedBody(nn.Module):
    """Graph bug: the feature extractor is detached, so only a linear read-out of random features learns."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, 4), nn.Tanh())
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.body(x).detach())


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def subject(model: nn.Module):
    torch.manual_seed(0)
    return regression_subject("sine", model, sine_data(256, 0), sine_data(64, 1), batch_size=16,
                              value_range=(0.0, 1.0), recipe=Recipe(lr=1e-2, steps=300))


def case_constant_model():
    return subject(ConstantModel())


def case_detached_body():
    torch.manual_seed(0)
    return subject(DetachedBody())


def case_mlp_on_sine():
    torch.manual_seed(0)
    return subject(mlp())
