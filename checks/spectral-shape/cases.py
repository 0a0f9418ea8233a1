"""Cases for spectral-shape (run with {"enabled": true}, see expected.json): small trained models, and a planted collapse.

Each healthy case is a tiny model trained for a few dozen Adam steps on a seeded synthetic task: an
MLP, a convnet, a two-layer transformer encoder. The faulty one is the trained MLP with its hidden
layer replaced by a rank-one matrix (an outer product, the layer's own norm, plus tiny noise).
"""
import torch
from torch import nn
from torch.nn import functional as F

from modeldoctor import Weights


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x):  # (B, 1, 8, 8) -> (B, 4)
        return self.head(self.features(x))


class Encoder(nn.Module):
    def __init__(self, d: int = 32):
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True), 2)
        self.head = nn.Linear(d, 1)

    def forward(self, x):  # (B, T, 4) -> (B, T, 1)
        return self.head(self.encoder(self.embed(x)))


def trained(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, steps: int = 40) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = loss_fn(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def weights(model: nn.Module) -> Weights:
    return Weights.from_state_dict({name: value.detach().clone() for name, value in model.state_dict().items()})


def mlp() -> nn.Module:
    torch.manual_seed(0)
    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(1))  # (512, 8)
    y = torch.sin(x[:, :3].sum(-1, keepdim=True)) + x[:, 3:4] * x[:, 4:5]  # (512, 1)
    model = nn.Sequential(nn.Linear(8, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(),
                          nn.Linear(64, 1))
    return trained(model, x, y, F.mse_loss)


def case_mlp_trained():
    return weights(mlp())


def case_convnet_trained():
    torch.manual_seed(0)
    x = torch.randn(512, 1, 8, 8, generator=torch.Generator().manual_seed(1))  # (512, 1, 8, 8)
    y = (x[:, 0, :4, :4].mean((1, 2)) > 0).long() * 2 + (x[:, 0, 4:, 4:].mean((1, 2)) > 0).long()  # (512,) 4 classes
    return weights(trained(ConvNet(), x, y, F.cross_entropy))


def case_tiny_transformer_trained():
    torch.manual_seed(0)
    x = torch.randn(256, 8, 4, generator=torch.Generator().manual_seed(1))  # (256, 8, 4)
    y = x.sum(-1, keepdim=True).cumsum(1) / 4  # (256, 8, 1)
    return weights(trained(Encoder(), x, y, F.mse_loss))


def case_mlp_rank_one_hidden_layer():
    state = {name: value.detach().clone() for name, value in mlp().state_dict().items()}
    g = torch.Generator().manual_seed(2)
    old = state["2.weight"]  # (64, 64)
    u, v = torch.randn(64, 1, generator=g), torch.randn(1, 64, generator=g)
    rank_one = u @ v * (old.norm() / (u.norm() * v.norm()))  # (64, 64), ‖·‖_F as before
    state["2.weight"] = rank_one + 1e-3 * old.abs().mean() * torch.randn(64, 64, generator=g)
    return Weights.from_state_dict(state)
