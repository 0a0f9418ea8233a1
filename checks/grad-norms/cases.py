"""Cases for grad-norms: exploding, vanishing, dead, non-finite and starved-group gradients, and healthy twins."""
import torch
from torch import nn

from modeldoctor import Recipe, regression_subject
from modeldoctor.core.capabilities import Capabilities


def smooth_data(n: int, seed: int, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=generator)  # (n, dim) in [0, 1]
    y = 0.5 + 0.4 * torch.sin(3 * x[:, :1] - 1.5 * x[:, 1:2])  # (n, 1) in [0.1, 0.9]
    return x, y


def subject(model: nn.Module, lr: float = 3e-4, **fields):
    return regression_subject("grad-case", model, smooth_data(256, 0), smooth_data(64, 1), batch_size=32,
                              value_range=(0.0, 1.0), recipe=Recipe(optimizer="adam", lr=lr, steps=300), **fields)


def mlp(widths: list[int], activation=nn.Tanh) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class LogFeatures(nn.Module):
    """Bug: log of x − 2 on inputs in [0, 1] is the log of a negative number (NaN)."""

    def forward(self, x):  # (B, D) -> (B, D)
        return torch.log(x - 2)


class LogFeatureModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = LogFeatures()
        self.body = mlp([8, 32, 1])

    def forward(self, x):
        return self.body(self.features(x))


class TwoTowers(nn.Module):
    """Two towers read the two halves of the input; a head mixes their embeddings."""

    def __init__(self, detach_b: bool = False, scale_b: float = 1.0):
        super().__init__()
        self.tower_a, self.tower_b = mlp([4, 32, 16]), mlp([4, 32, 16])
        self.head = nn.Linear(32, 1)
        self.detach_b, self.scale_b = detach_b, scale_b

    def forward(self, x):  # (B, 8) -> (B, 1)
        b = self.tower_b(x[:, 4:]) * self.scale_b
        return self.head(torch.cat([self.tower_a(x[:, :4]), b.detach() if self.detach_b else b], dim=-1))


GROUPS = {"image": ["tower_a"], "text": ["tower_b"], "fusion": ["head"]}


def case_healthy_mlp():
    torch.manual_seed(0)
    return subject(mlp([8, 64, 64, 1]))


def case_exploding_deep_mlp():
    """Eight un-normalised ReLU layers with N(0, 1) weights: activations and gradients grow ~4× per layer."""
    torch.manual_seed(0)
    model = mlp([8] + [32] * 7 + [1], activation=nn.ReLU)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.normal_(0.0, 1.0)
    return subject(model)


def case_vanishing_deep_sigmoid():
    """Twelve sigmoid layers: each scales the backward signal by ≤ 1/4 times a small weight.

    The output bias starts at the mean target ("init well"), so the loss can only fall if the
    input reaches the output, which needs gradient in the first layers.
    """
    torch.manual_seed(0)
    model = mlp([8] + [32] * 11 + [1], activation=nn.Sigmoid)
    x, y = smooth_data(256, 0)
    with torch.no_grad():
        model[-1].bias += y.mean() - model(x).mean()
    return subject(model, lr=1e-4)


def case_dead_tower_detached():
    torch.manual_seed(0)
    return subject(TwoTowers(detach_b=True))


def case_nan_from_log_of_negative():
    torch.manual_seed(0)
    return subject(LogFeatureModel())


def case_healthy_towers_with_groups():
    torch.manual_seed(0)
    return subject(TwoTowers(), capabilities=Capabilities(param_groups=GROUPS))


def case_frozen_text_group():
    """The seed's retrieval failure: one declared modality tower never learns (here: frozen)."""
    torch.manual_seed(0)
    model = TwoTowers()
    model.tower_b.requires_grad_(False)
    return subject(model, capabilities=Capabilities(param_groups=GROUPS))


def case_starved_text_group():
    """A tower the loss barely reaches: its embedding enters the head scaled by a constant 1e-5."""
    torch.manual_seed(0)
    return subject(TwoTowers(scale_b=1e-5), capabilities=Capabilities(param_groups=GROUPS))
