"""Cases for untrained-layers: tiny models trained for a few dozen Adam steps, with a layer frozen or left out.

Each case trains on a seeded synthetic task and hands back the state dict as `Weights` (no model
class): an MLP regression, a convnet with BatchNorm classifying noise, a two-layer
nn.TransformerEncoder. The faulty twins freeze a layer, build the optimizer over the head only,
train BatchNorm in eval mode, or never train; the `--against` cases compare with the weights at init.
"""
import torch
from torch import nn
from torch.nn import functional as F

from modeldoctor.core.evidence import Weights


def weights_of(model: nn.Module, **fields) -> Weights:
    return Weights.from_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()}, **fields)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))


def fit(model: nn.Module, x, loss_fn, steps: int, lr: float = 3e-3, params=None) -> nn.Module:
    optimizer = torch.optim.Adam(params if params is not None else [p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(model(x)).backward()
        optimizer.step()
    return model


def regression(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 32, generator=g)  # (N, 32)
    y = torch.tanh(x[:, :16] * x[:, 16:])  # (N, 16)
    return x, lambda out: F.mse_loss(out, y)


def trained_mlp(freeze_first: bool = False, head_only: bool = False, steps: int = 150) -> nn.Sequential:
    model, (x, loss) = mlp(), regression()
    if freeze_first:
        model[0].requires_grad_(False)
    return fit(model, x, loss, steps, params=list(model[4].parameters()) if head_only else None)


def convnet(train_mode: bool = True) -> nn.Sequential:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 8, 8, generator=g)  # (N, C, H, W)
    y = torch.randint(0, 10, (64,), generator=g)
    model.train(train_mode)
    return fit(model, x, lambda out: F.cross_entropy(out, y), 60)


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 4)

    def forward(self, x):  # (B, T, 8) -> (B, 4)
        return self.head(self.encoder(self.inp(x)).mean(1))


def case_healthy_trained_mlp():
    return weights_of(trained_mlp())


def case_convnet_batchnorm_trained_in_train_mode():
    return weights_of(convnet(train_mode=True))


def case_tiny_transformer_trained():
    torch.manual_seed(4)
    model = TinyTransformer()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 6, 8, generator=g)  # (B, T, 8)
    y = x.sum(1)[:, :4]
    return weights_of(fit(model, x, lambda out: F.mse_loss(out, y), 60, lr=1e-3))


def case_mlp_first_layer_frozen():
    return weights_of(trained_mlp(freeze_first=True))


def case_optimizer_over_the_head_only():
    return weights_of(trained_mlp(head_only=True))


def case_batchnorm_trained_in_eval_mode():
    return weights_of(convnet(train_mode=False))


def case_model_at_init():
    return weights_of(mlp())


def case_against_init_with_frozen_encoder():
    model, (x, loss) = mlp(), regression()
    base = weights_of(model)
    for layer in (model[0], model[2]):
        layer.requires_grad_(False)
    return weights_of(fit(model, x, loss, 100), base=base)


def case_against_init_all_trained():
    model, (x, loss) = mlp(), regression()
    base = weights_of(model)
    return weights_of(fit(model, x, loss, 100), base=base)


def case_against_itself_nothing_changed():
    model = trained_mlp(steps=50)
    return weights_of(model, base=weights_of(model))
