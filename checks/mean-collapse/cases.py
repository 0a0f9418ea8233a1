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


# --- per-head scoring: a multi-output model declares its heads ---------------------------------

class ThreeHeads(nn.Module):
    """From a 4-d input: a scalar `z` (regression), a 16-sample `spectrum` (signal), a `kind` class."""

    def __init__(self, blind: set[str]):
        super().__init__()
        self.blind = blind
        self.trunk = nn.Sequential(nn.Linear(4, 64), nn.Tanh())
        self.z, self.spectrum, self.kind = nn.Linear(64, 1), nn.Linear(64, 16), nn.Linear(64, 3)

    def forward(self, x):  # (B, 4) -> dict of (B,), (B, 16), (B, 3)
        hidden = {name: self.trunk(x * 0 if name in self.blind else x) for name in ("z", "spectrum", "kind")}
        return {"z": self.z(hidden["z"]).squeeze(-1), "spectrum": self.spectrum(hidden["spectrum"]),
                "kind": self.kind(hidden["kind"])}


def three_head_data(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 4, generator=generator)  # (n, 4)
    grid = torch.linspace(0, 1, 16)
    spectrum = torch.exp(-((grid - x[:, :1]) ** 2) / 0.02) * (0.5 + x[:, 1:2])  # a line whose position is x0
    return {"x": x, "z": x[:, 0] * 2 + x[:, 2], "spectrum": spectrum, "kind": (x[:, 3] * 3).long().clamp(max=2)}


def three_head_subject(blind: set[str]):
    from modeldoctor import Head, Subject, Task

    class Batches:
        def __init__(self, data, size):
            self.data, self.size = data, size

        def __iter__(self):
            for start in range(0, len(self.data["x"]), self.size):
                yield {k: v[start : start + self.size] for k, v in self.data.items()}

    def loss(model, batch):
        out = model(batch["x"])
        return (nn.functional.mse_loss(out["z"], batch["z"]) + nn.functional.mse_loss(out["spectrum"], batch["spectrum"])
                + nn.functional.cross_entropy(out["kind"], batch["kind"]))

    def head(name, kind, classes=None):
        return Head(kind, lambda model, batch: (model(batch["x"])[name], batch[name]), classes)

    torch.manual_seed(0)
    subject = Subject(
        name="three-heads", model=ThreeHeads(blind), train_batches=Batches(three_head_data(1024, 0), 64),
        eval_batches=Batches(three_head_data(256, 1), 64), loss=loss,
        predict=lambda model, batch: (model(batch["x"])["z"], batch["z"]),
        task=Task(kind="multi", metric="mse"), recipe=Recipe(lr=3e-3, steps=400),
        heads={"z": head("z", "regression"), "spectrum": head("spectrum", "signal"), "kind": head("kind", "classification", 3)},
    )
    train(subject)
    return subject


def case_heads_all_learned():
    return three_head_subject(set())


def case_heads_z_blind():
    """The seed's redshift head: its error equals that of predicting the median."""
    return three_head_subject({"z"})


def case_heads_spectrum_blind():
    """The seed's spectrum head: correlation with the target about 0."""
    return three_head_subject({"spectrum"})


def case_heads_class_blind():
    return three_head_subject({"kind"})
