"""Register your own model with modeldoctor from a plain Python file.

The model, data and loss below live outside the modeldoctor package: a small MLP that regresses
y = sin(x)/2 + 0.5 (values in [0, 1]) on synthetic 1-D data, with batches as (x, y) tuples.

1. Train it and save a checkpoint that names its subject and config:

       python examples/custom_model_plugin.py sine.pt [STEPS]

2. Diagnose it; `--plugin` imports this file so the `sine-mlp` subject is known:

       modeldoctor diagnose sine.pt --plugin examples/custom_model_plugin.py
       modeldoctor list --plugin examples/custom_model_plugin.py

To ship the model as an installable package instead, see `examples/entrypoint_package/`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import modeldoctor
from modeldoctor import Recipe, Subject, Task

DEFAULTS = {
    "n_train": 512,
    "n_eval": 256,
    "batch_size": 64,
    "hidden": 32,
    "lr": 1e-2,
    "steps": 500,
    "data_seed": 0,
}


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x uniform in [-π, π] and y = sin(x)/2 + 0.5 in [0, 1]; both (n, 1)."""
    x = (torch.rand(n, 1, generator=generator) * 2 - 1) * math.pi
    return x, torch.sin(x) / 2 + 0.5


class TupleBatches:
    """A re-iterable of (x, y) tuples, reshuffled on every pass when `shuffle` (as a DataLoader does)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool):
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.x)) if self.shuffle else torch.arange(len(self.x))
        for start in range(0, len(self.x), self.batch_size):
            rows = order[start : start + self.batch_size]
            yield self.x[rows], self.y[rows]  # (B, 1), (B, 1)


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def predict(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    return model(x), y


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    prediction, target = predict(model, batch)
    return nn.functional.mse_loss(prediction, target)


@modeldoctor.register_subject("sine-mlp")
def build(config: dict) -> Subject:
    """MLP regressor on y = sin(x)/2 + 0.5 (example plugin from examples/custom_model_plugin.py)."""
    cfg = {**DEFAULTS, **(config or {})}
    generator = torch.Generator().manual_seed(cfg["data_seed"])
    x_train, y_train = make_data(cfg["n_train"], generator)
    x_eval, y_eval = make_data(cfg["n_eval"], generator)
    return Subject(
        name="sine-mlp",
        model=make_model(cfg["hidden"]),
        train_batches=TupleBatches(x_train, y_train, cfg["batch_size"], shuffle=True),
        eval_batches=TupleBatches(x_eval, y_eval, cfg["batch_size"], shuffle=False),
        loss=loss,
        predict=predict,
        task=Task(kind="regression", value_range=(0.0, 1.0), metric="psnr_db"),
        recipe=Recipe(optimizer="adam", lr=cfg["lr"], steps=cfg["steps"]),
        config=cfg,  # saved in the checkpoint, so `diagnose` rebuilds the same subject
        description="MLP regressor on y = sin(x)/2 + 0.5",
    )


if __name__ == "__main__":
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else "sine.pt"
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else None
    torch.set_num_threads(1)
    modeldoctor.seed_everything(0)
    subject = modeldoctor.build_subject("sine-mlp", {} if steps is None else {"steps": steps})
    modeldoctor.train(subject)  # your own training loop works just as well
    modeldoctor.save_checkpoint(out, subject)
    print(f"saved {out}; now run:\n  modeldoctor diagnose {out} --plugin {__file__}")
