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


class Blind(nn.Module):
    """Data bug: the input is zeroed before the network, so every example gets the same logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x * 0)


def classifier_subject(model: nn.Module, classes: int = 4):
    from modeldoctor import Subject, Task, TensorBatches

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=generator)  # (N, 8) features
    y = torch.randint(0, classes, (128,), generator=generator)  # (N,) arbitrary labels: memorisable, not learnable
    return Subject(
        name="random-labels", model=model,
        train_batches=TensorBatches(x, y, 16), eval_batches=TensorBatches(x, y, 16, shuffle=False),
        loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
        predict=lambda m, b: (m(b[0]), b[1]),
        task=Task(kind="classification", metric="accuracy", num_classes=classes),
        recipe=Recipe(lr=1e-2, steps=300),
    )


def case_classifier_memorises_random_labels():
    torch.manual_seed(0)
    return classifier_subject(nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4)))


def case_blind_classifier():
    torch.manual_seed(0)
    return classifier_subject(Blind(nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))))


class TwoTowers(nn.Module):
    """Retrieval: two linear towers embed paired views; the loss is InfoNCE over the batch."""

    def __init__(self, shared_input: bool = True):
        super().__init__()
        self.query, self.key = nn.Linear(16, 32), nn.Linear(16, 32)
        self.shared_input = shared_input

    def forward(self, a, b):  # (B, 16), (B, 16) -> (B, B) similarity logits
        keys = self.key(b if self.shared_input else torch.zeros_like(b))
        return nn.functional.normalize(self.query(a), dim=-1) @ nn.functional.normalize(keys, dim=-1).T / 0.1


def retrieval_subject(model: nn.Module):
    from modeldoctor import Subject, Task, TensorBatches

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(128, 16, generator=generator)
    b = a @ torch.randn(16, 16, generator=generator) + 0.1 * torch.randn(128, 16, generator=generator)  # paired view

    def logits_and_labels(m, batch):
        logits = m(*batch)
        return logits, torch.arange(len(logits))

    return Subject(
        name="two-towers", model=model,
        train_batches=TensorBatches(a, b, 16), eval_batches=TensorBatches(a, b, 16, shuffle=False),
        loss=lambda m, batch: nn.functional.cross_entropy(*logits_and_labels(m, batch)),
        predict=logits_and_labels,
        task=Task(kind="retrieval", metric="mse"), recipe=Recipe(lr=1e-2, steps=300),
    )


def case_retrieval_towers_memorise_pairs():
    torch.manual_seed(0)
    return retrieval_subject(TwoTowers())


def case_retrieval_key_tower_sees_nothing():
    torch.manual_seed(0)
    return retrieval_subject(TwoTowers(shared_input=False))
