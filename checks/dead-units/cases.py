"""Cases for dead-units: trained tiny MLPs and a conv net, healthy, then with dead units planted.

Every model is trained first (a short seeded Adam run on a small regression task), so the healthy
cases are trained models; the faults are planted afterwards, as a collapse in training leaves them.
"""
import torch
from torch import nn

from modeldoctor import Weights

HIDDEN = 32


class OffsetRMSNorm(nn.Module):
    """RMSNorm with its scale stored as an offset, output × (1 + γ), γ initialised at 0 (as in Gemma)."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, x):  # (B, width)
        return x * x.square().mean(-1, keepdim=True).add(1e-6).rsqrt() * (1 + self.weight)


def mlp(norm: str = "") -> nn.Sequential:
    """8 -> 32 [-> norm] -> 32 -> 10 with ReLUs: layers `0`, (`1` the norm), then the next two Linears."""
    torch.manual_seed(0)
    norms = {"": [], "layernorm": [nn.LayerNorm(HIDDEN)], "offset": [OffsetRMSNorm(HIDDEN)]}[norm]
    return nn.Sequential(nn.Linear(8, HIDDEN), *norms, nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))


def convnet() -> nn.Sequential:
    """(B, 1, 8, 8) -> conv 8 -> BN -> ReLU -> conv 8 -> BN -> ReLU -> mean pool -> Linear(8, 1)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))


def data(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if isinstance(model[0], nn.Conv2d):
        x = torch.randn(64, 1, 8, 8, generator=g)  # (64, 1, 8, 8)
        return x, x[:, :, 2:6, 2:6].mean((1, 2, 3))[:, None]  # (64, 1)
    x = torch.randn(128, 8, generator=g)  # (128, 8)
    return x, torch.sin(x @ torch.randn(8, 10, generator=g))  # (128, 10)


def trained(model: nn.Module, steps: int = 40, lr: float = 3e-3, weight_decay: float = 0.0) -> nn.Module:
    x, y = data(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return model.eval()


def weights(model: nn.Module) -> Weights:
    return Weights.from_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})


def zero_units(model: nn.Sequential, layer: int, units: list[int]) -> nn.Sequential:
    """Zero the incoming rows and biases of `units` of `model[layer]` (a ReLU unit at 0 outputs 0)."""
    with torch.no_grad():
        model[layer].weight[units] = 0.0
        model[layer].bias[units] = 0.0
    return model


def case_trained_mlp():
    return weights(trained(mlp()))


def case_trained_mlp_with_layernorm():
    return weights(trained(mlp("layernorm")))


def case_trained_convnet_with_batchnorm():
    return weights(trained(convnet()))


def case_offset_norm_scales_centred_on_zero():
    """Gemma-style (1 + γ) scales near 0 are healthy: the norm layer is not judged."""
    return weights(trained(mlp("offset")))


def case_zeroed_hidden_units():
    """8 of the 32 hidden units of the second layer lost their weights: 25% dead."""
    return weights(zero_units(trained(mlp()), 2, list(range(8))))


def case_one_zero_row():
    return weights(zero_units(trained(mlp()), 2, [5]))


def case_relus_died_under_weight_decay():
    """A real death: lr 3e-2 kills 9 of the 32 second-layer ReLUs, then weight decay 1.0 shrinks both sides.

    The 9 units flagged are exactly those that output 0 on every training input.
    """
    return weights(trained(mlp(), steps=150, lr=3e-2, weight_decay=1.0))


def case_dead_conv_filters():
    """3 of the 8 filters of the second convolution are zero."""
    return weights(zero_units(trained(convnet()), 3, [0, 1, 2]))


def case_layernorm_scales_at_zero():
    model = trained(mlp("layernorm"))
    with torch.no_grad():
        model[1].weight[:6] = 0.0  # 6 of 32 channels output their bias alone
    return weights(model)


def case_dead_output_row():
    """One output of ten is constant (its row is zero): no consumer, so no fix; 10% warns."""
    return weights(zero_units(trained(mlp()), 4, [3]))


def frozen_zero_layer() -> nn.Sequential:
    """The model of case zero_layer_never_trained (tests/test_dead_units.py loads the fix's tensors into it)."""
    model = zero_units(mlp(), 2, list(range(HIDDEN)))
    model[2].requires_grad_(False)
    return trained(model)


def case_zero_layer_never_trained():
    """A zero-initialised hidden layer left out of the optimizer: every unit dead."""
    return weights(frozen_zero_layer())
