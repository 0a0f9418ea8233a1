"""An installable modeldoctor plugin: one model, registered through an entry point.

`pyproject.toml` declares

    [project.entry-points."modeldoctor.subjects"]
    sine-mlp-ep = "md_example_plugin:build"

so after `pip install` modeldoctor finds the subject `sine-mlp-ep` without `--plugin`. The factory
is a plain function (no decorator): the entry point's name is the subject's name.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from modeldoctor import Recipe, Subject, Task

DEFAULTS = {"n_train": 512, "n_eval": 256, "batch_size": 64, "hidden": 32, "lr": 1e-2, "steps": 500, "data_seed": 0}


def make_batches(n: int, batch_size: int, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) tuples with x in [-π, π] and y = sin(x)/2 + 0.5 in [0, 1]; each (B, 1)."""
    x = (torch.rand(n, 1, generator=generator) * 2 - 1) * math.pi
    y = torch.sin(x) / 2 + 0.5
    return list(zip(x.split(batch_size), y.split(batch_size)))


def predict(model: nn.Module, batch):
    x, y = batch
    return model(x), y


def loss(model: nn.Module, batch) -> torch.Tensor:
    prediction, target = predict(model, batch)
    return nn.functional.mse_loss(prediction, target)


def build(config: dict) -> Subject:
    """MLP regressor on y = sin(x)/2 + 0.5 (example entry-point package)."""
    cfg = {**DEFAULTS, **(config or {})}
    generator = torch.Generator().manual_seed(cfg["data_seed"])
    hidden = cfg["hidden"]
    model = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    return Subject(
        name="sine-mlp-ep",
        model=model,
        train_batches=make_batches(cfg["n_train"], cfg["batch_size"], generator),
        eval_batches=make_batches(cfg["n_eval"], cfg["batch_size"], generator),
        loss=loss,
        predict=predict,
        task=Task(kind="regression", value_range=(0.0, 1.0), metric="psnr_db"),
        recipe=Recipe(optimizer="adam", lr=cfg["lr"], steps=cfg["steps"]),
        config=cfg,
        description="MLP regressor on y = sin(x)/2 + 0.5",
    )
