"""One training loop and one evaluation for every subject, driven by its Recipe.

Checks, fixes, `bench` and the samples all train through `train`, so a recipe fix (warmup, clipping)
acts everywhere at once.
"""
from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..core.errors import BudgetExceeded
from ..core.subject import Batch, Head, Recipe, Subject
from .numerics import accuracy, mse, psnr_db
from .retrieval_metrics import evaluate_retrieval


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params: Iterable[nn.Parameter], recipe: Recipe, lr: float | None = None) -> torch.optim.Optimizer:
    lr = recipe.lr if lr is None else lr
    params = [p for p in params if p.requires_grad]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r} (use adam, adamw or sgd)")


def lr_factor(recipe: Recipe, step: int, total_steps: int) -> float:
    """Multiplier on the peak LR at `step` (0-based) for the recipe's schedule."""
    if recipe.schedule == "constant":
        return 1.0
    if recipe.schedule == "warmup-cosine":
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        span = max(1, total_steps - recipe.warmup_steps)
        progress = min(1.0, (step - recipe.warmup_steps) / span)
        return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {recipe.schedule!r} (use constant or warmup-cosine)")


def cycle(batches: Iterable[Batch]) -> Iterator[Batch]:
    """Endless pass over a re-iterable (a new shuffle each epoch, as a DataLoader does)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("the subject's training batches are empty")


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    seconds: float = 0.0


class TrainMonitor:
    """Watches a training run; `train` calls it between backward and step, and after the step.

    Subclasses override what they need. `after_backward` returning False skips that optimizer
    step (e.g. after a non-finite gradient); raising StopTraining ends the run early.
    """

    def after_backward(self, step: int, loss: torch.Tensor, model: nn.Module) -> bool:
        return True

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass


class StopTraining(Exception):
    """Raised by a TrainMonitor to end a run early (the log so far is kept)."""


def train(
    subject: Subject,
    steps: int | None = None,
    *,
    model: nn.Module | None = None,
    batches: Iterable[Batch] | None = None,
    lr: float | None = None,
    lr_at: Callable[[int], float] | None = None,
    deadline: float | None = None,
    on_step: Callable[[int, float], None] | None = None,
    monitor: TrainMonitor | None = None,
) -> TrainLog:
    """Train `model` (default: subject.model, in place) with the subject's loss and recipe.

    batches: defaults to the subject's training batches; pass `[batch]` to overfit one batch.
    lr: peak learning rate instead of the recipe's; lr_at(step): absolute LR per step instead of
        the recipe's schedule (the LR range test uses it).
    deadline: a `time.monotonic()` value; past it the loop raises BudgetExceeded.
    """
    model = subject.model if model is None else model
    recipe = subject.recipe
    steps = recipe.steps if steps is None else steps
    optimizer = make_optimizer(model.parameters(), recipe, lr)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    log, start = TrainLog(), time.monotonic()
    model.train()
    try:
        for step, batch in zip(range(steps), cycle(subject.train_batches if batches is None else batches)):
            if deadline is not None and time.monotonic() > deadline:
                raise BudgetExceeded(f"stopped after {step} of {steps} training steps")
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr_at(step) if lr_at else base * lr_factor(recipe, step, steps)
            loss = subject.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            proceed = monitor is None or monitor.after_backward(step, loss, model)  # sees the raw gradients
            if recipe.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            if proceed:
                optimizer.step()
            if monitor is not None:
                monitor.after_step(step, model, optimizer)
            log.losses.append(float(loss.detach()))
            log.lrs.append(optimizer.param_groups[0]["lr"])
            if on_step is not None:
                on_step(step, log.losses[-1])
    except StopTraining:
        pass
    log.seconds = time.monotonic() - start
    return log


@torch.no_grad()
def collect_predictions(
    subject: Subject,
    batches: Iterable[Batch] | None = None,
    model: nn.Module | None = None,
    max_batches: int | None = None,
    head: Head | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated (prediction, target) over the evaluation batches (or `batches`), model in eval mode.

    Uses the subject's predict and task, or those of one declared `head`. By kind:
    regression: both flattened to (N,); signal: one row per example, (N, L);
    classification and tokens: logits (N, C) and targets (N,), without `task.ignore_index` positions.
    """
    model = subject.model if model is None else model
    predict, kind = (head.predict, head.kind) if head else (subject.predict, subject.task.kind)
    ignore = subject.task.ignore_index
    was_training = model.training
    model.eval()
    predictions, targets = [], []
    try:
        for batch in itertools.islice(subject.eval_batches if batches is None else batches, max_batches):
            prediction, target = predict(model, batch)
            prediction = prediction.detach()
            if kind in ("classification", "tokens"):
                logits, labels = prediction.float().reshape(-1, prediction.shape[-1]), target.reshape(-1)
                keep = labels != ignore
                predictions.append(logits[keep])
                targets.append(labels[keep])
            elif kind == "signal":
                predictions.append(prediction.float().reshape(prediction.shape[0], -1))
                targets.append(target.detach().float().reshape(target.shape[0], -1))
            else:
                predictions.append(prediction.float().reshape(-1))
                targets.append(target.detach().float().reshape(-1))
    finally:
        model.train(was_training)
    return torch.cat(predictions), torch.cat(targets)


def data_range(subject: Subject) -> float:
    low, high = subject.task.value_range or (0.0, 1.0)
    return float(high - low)


def evaluate(subject: Subject, model: nn.Module | None = None) -> float:
    """The subject's task metric on its evaluation batches."""
    if subject.task.kind == "retrieval":  # recall@K or map over every direction, from the `embed` capability
        return evaluate_retrieval(subject, model)
    prediction, target = collect_predictions(subject, model=model)
    metric = subject.task.metric
    if metric == "psnr_db":
        return psnr_db(mse(prediction, target), data_range(subject))
    if metric == "mse":
        return mse(prediction, target)
    if metric == "accuracy":
        return accuracy(prediction, target)
    if metric == "mae":
        return float((prediction - target).abs().mean())
    raise ValueError(f"unknown task metric {metric!r}")



def target_mean(subject: Subject, max_batches: int | None = 20) -> torch.Tensor:
    """Mean training target (scalar tensor): what the trivial mean predictor outputs."""
    _, target = collect_predictions(subject, batches=itertools.islice(subject.train_batches, max_batches))
    return target.double().mean().float()
