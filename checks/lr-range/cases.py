"""Cases for lr-range: the same small MLP regression with learning rates far too high, too low, and sensible."""
import math

import torch
from torch import nn

from modeldoctor import Recipe, regression_subject


def sine_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=generator) * 2 - 1  # (n, 1) in [-1, 1]
    return x, 0.5 + 0.4 * torch.sin(math.pi * x)  # targets in [0.1, 0.9]


def subject(lr: float, optimizer: str = "adam", steps: int = 100):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    return regression_subject("sine", model, sine_data(512, 0), sine_data(128, 1), batch_size=32,
                              value_range=(0.0, 1.0), recipe=Recipe(optimizer=optimizer, lr=lr, steps=steps))


def case_adam_lr_far_too_high():
    """Adam at lr 3: the range test diverges near 0.3-0.6 (fail; warmup-cosine prescribed)."""
    return subject(3.0, "adam")


def case_sgd_lr_far_too_high():
    """SGD with momentum at lr 3: training goes to NaN (fail; warmup-cosine and grad-clip prescribed)."""
    return subject(3.0, "sgd")


def case_adam_lr_near_divergence():
    """Adam at lr 0.25: below divergence (0.3-0.7), but within 3× of it (warn: decrease)."""
    return subject(0.25, "adam")


def case_lr_far_too_low():
    """Adam at lr 1e-7: four decades below the steepest descent, the loss barely moves (warn: increase)."""
    return subject(1e-7, "adam")


def case_sensible_lr():
    """Adam at lr 3e-3: between the steepest descent and divergence / 3 (pass)."""
    return subject(3e-3, "adam")
