"""Cases for non-finite: a trained tiny MLP, then NaN/Inf planted in its weights, a complex tensor and buffers.

Every case is a short, seeded Adam run on a small regression task, so the healthy ones are trained
models; the faults are planted afterwards, as a diverged step would leave them.
"""
import torch
from torch import nn

from modeldoctor import Weights


class Net(nn.Module):
    """A tiny MLP, optionally with a complex spectral filter and buffers (an int index, an attention mask)."""

    def __init__(self, spectral: bool = False, buffers: bool = False):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
        self.filter = nn.Parameter(torch.ones(8, dtype=torch.complex64)) if spectral else None
        if buffers:
            self.register_buffer("index", torch.arange(8, dtype=torch.int64) * 10**12)  # (8,) int64
            self.register_buffer("causal_mask", torch.full((8, 8), float("-inf")).triu(1))  # (8, 8) additive mask

    def forward(self, x):  # (B, 8) -> (B, 1)
        if self.filter is not None:
            x = torch.fft.ifft(torch.fft.fft(x) * self.filter).real
        return self.body(x)


def trained(**kinds) -> Net:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = torch.sin(x[:, :3]).sum(1, keepdim=True)
    model = Net(**kinds)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return model


def weights(model: nn.Module) -> Weights:
    return Weights.from_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})


def case_trained_mlp():
    return weights(trained())


def case_nan_in_one_weight():
    model = trained()
    with torch.no_grad():
        model.body[0].weight[3, 5] = float("nan")  # one value of 256
    return weights(model)


def case_inf_in_a_bias():
    model = trained()
    with torch.no_grad():
        model.body[2].bias[0] = float("inf")
    return weights(model)


def case_diverged_everywhere():
    """What an optimizer step with a NaN gradient leaves: every parameter NaN."""
    model = trained()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    return weights(model)


def case_complex_tensor_with_nan():
    model = trained(spectral=True)
    with torch.no_grad():
        model.filter[2] = complex(1.0, float("nan"))  # only the imaginary part
    return weights(model)


def case_complex_tensor_trained():
    return weights(trained(spectral=True))


def case_integer_buffer_and_mask():
    """An int64 index buffer with huge values and an additive causal mask of −Inf: neither is a fault."""
    return weights(trained(buffers=True))
