"""Call modeldoctor from your own training script: no checkpoint, no registry, no CLI.

Wrap what you already have (model, batches, loss) in a `modeldoctor.Subject`, train as usual, then
run the battery of checks and look at the results. Each check works on a copy: your model is untouched.

    python examples/use_from_training_script.py [STEPS]
"""
from __future__ import annotations

import json
import math
import sys

import torch
from torch import nn

import modeldoctor

# --- your code: data, model, loss, training loop ---------------------------------------------

def make_batches(n: int, batch_size: int, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) tuples with x in [-π, π] and y = sin(x)/2 + 0.5 in [0, 1]; each (B, 1)."""
    x = (torch.rand(n, 1, generator=generator) * 2 - 1) * math.pi
    return list(zip(x.split(batch_size), (torch.sin(x) / 2 + 0.5).split(batch_size)))


def predict(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) for one batch: the doctor scores predictions with this."""
    x, y = batch
    return model(x), y


def loss_fn(model: nn.Module, batch) -> torch.Tensor:
    prediction, target = predict(model, batch)
    return nn.functional.mse_loss(prediction, target)


def main(steps: int = 300) -> list[modeldoctor.CheckResult]:
    torch.set_num_threads(1)
    modeldoctor.seed_everything(0)
    generator = torch.Generator().manual_seed(0)
    train_batches = make_batches(512, 64, generator)
    eval_batches = make_batches(256, 64, generator)
    model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    lr = 1e-2

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):  # your usual loop
        loss = loss_fn(model, train_batches[step % len(train_batches)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    # --- modeldoctor: describe the run, then diagnose it --------------------------------------
    subject = modeldoctor.Subject(
        name="my-sine-mlp",
        model=model,
        train_batches=train_batches,
        eval_batches=eval_batches,
        loss=loss_fn,
        predict=predict,
        task=modeldoctor.Task(kind="regression", value_range=(0.0, 1.0), metric="psnr_db"),
        # The recipe you trained with: checks that train a copy (overfit-batch) reuse it.
        recipe=modeldoctor.Recipe(optimizer="adam", lr=lr, steps=steps),
    )
    results = modeldoctor.run_battery(subject, seed=0, budget_s=60)
    for result in results:
        fixes = f"  (fixes: {', '.join(result.fixes)})" if result.fixes else ""
        print(f"{result.status:5}  {result.check:15} {result.summary}{fixes}")

    # The same data as `modeldoctor diagnose --json`, ready for your experiment tracker.
    report = modeldoctor.build_report({"name": subject.name}, results)
    print(json.dumps({"status": report["status"], "counts": report["counts"]}))
    return results


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
