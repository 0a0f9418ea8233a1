"""overfit-batch: can a copy of the model memorise one fixed training batch?"""
from __future__ import annotations

import torch
from torch import nn

from ..core.check import Check, CheckContext
from ..core.registry import register_check
from ..core.results import RANK, Figure, Finding, Measurement, derive
from ..core.subject import Subject
from ..probes.numerics import accuracy, mse, psnr_db
from ..probes.training import StopTraining, TrainMonitor, collect_predictions, data_range, train


def disable_dropout(model: nn.Module) -> None:
    """Dropout makes a fixed batch a moving target; switch it off on the copy."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        elif isinstance(module, nn.MultiheadAttention):
            module.dropout = 0.0


def frozen_randomness(loss, seed: int):
    """The loss with the same random draws every call: masks or queries sampled inside the loss
    would otherwise make one batch a moving target (REFERENCE-checks §1 pitfall)."""

    def frozen(model, batch):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return loss(model, batch)

    return frozen


ADVICE = [
    "Objective: is the loss computed on the right tensors, with the right sign and reduction, on the positions that matter?",
    "Data: do labels line up with inputs (shuffle both together; view vs permute; off-by-one shifts)?",
    "Graph: is anything detached (.detach(), .item(), torch.no_grad, in-place ops) or missing from the optimizer?",
    "Capacity: can the output reach the targets (activation range, quantizer, narrow bottleneck)? Try a bigger model.",
    "Learning rate: far too low or high? Run the lr-range check.",
]


class StopWhenMemorised(TrainMonitor):
    """Every `every` steps, scores the batch as the check would; ends training once it passes."""

    def __init__(self, check: "OverfitBatch", subject: Subject, batch, every: int):
        self.check, self.subject, self.batch, self.every = check, subject, batch, every
        self.initial_loss: float | None = None
        self.passed: dict | None = None  # the metrics that passed, measured before that step's update

    def after_backward(self, step: int, loss: torch.Tensor, model: nn.Module) -> bool:
        if self.initial_loss is None:
            self.initial_loss = float(loss.detach())
        if self.every and step and step % self.every == 0:
            metrics = self.check.batch_metrics(self.subject, self.batch, self.initial_loss, float(loss.detach()), step)
            if derive(self.check.judge(Measurement(metrics=metrics)))[0] == "pass":
                self.passed = metrics
                raise StopTraining
        return True


@register_check
class OverfitBatch(Check):
    """Single-batch overfit: can a copy of the model memorise one fixed training batch?

    What it checks
    Trains a copy of the model on the first training batch, frozen (same examples, same queries
    and masks every step, random draws inside the loss repeated, dropout off), with the subject's
    own loss, optimizer and learning rate, and measures how far the loss falls. By task kind it
    also measures:
    - regression with a known value range: the PSNR reached on that batch;
    - classification and tokens: the accuracy on that batch;
    - anything else (retrieval, unbounded regression): the loss drop alone.

    Why it matters
    Karpathy's recipe (2019): a model that cannot drive one batch to near-zero loss has a bug in
    its data, loss or graph (labels misaligned, loss on the wrong tensor, a detached branch,
    parameters missing from the optimizer) or a capacity bottleneck; nothing else is worth
    debugging first. Passing it means the model *can* fit, so poor evaluation numbers point at
    generalisation or at a train/eval mismatch instead.

    Evidence
    The loss curve (log scale), initial and final loss, the fractional loss drop and, by task,
    the PSNR or the accuracy on the memorised batch. A failure lists what to look at.

    Fixes
    scale-up tests the capacity explanation; learnable-temperature applies to a contrastive loss
    with a fixed temperature, which bounds how far it can fall (τ = 1 on cosine similarities caps
    an InfoNCE over 128 items at about 40% below log 128). The other bug classes have no automatic
    fix: check the loss, the labels and `requires_grad`, or sweep the learning rate (lr-range).

    Options
    steps (300): at most this many training steps on the batch (HF's TrainingTesterMixin uses 300).
    check_every (25): score the batch every this many steps and stop as soon as it passes (0: never).
    lr (None): learning rate; None uses the subject's recipe.
    pass_loss_drop (0.95), warn_loss_drop (0.80): fraction the loss must fall (HF mixin: 95%).
    pass_psnr_db (35), warn_psnr_db (25): PSNR thresholds for regression in a known range.
    pass_accuracy (1.0), warn_accuracy (0.9): batch accuracy for classification and tokens;
        a loss drop of at least pass_loss_drop also passes.
    """

    slug = "overfit-batch"
    code = "MD001"
    title = "Single-batch overfit"
    fixes = ("scale-up", "learnable-temperature")
    default_options = {
        "steps": 300, "check_every": 25, "lr": None, "pass_loss_drop": 0.95, "warn_loss_drop": 0.80,
        "pass_psnr_db": 35.0, "warn_psnr_db": 25.0, "pass_accuracy": 1.0, "warn_accuracy": 0.9,
    }

    def measure(self, subject: Subject, ctx: CheckContext) -> Measurement:
        batch = next(iter(subject.train_batches))  # frozen: the same object every step
        disable_dropout(subject.model)
        subject.loss = frozen_randomness(subject.loss, ctx.seed)
        stop = StopWhenMemorised(self, subject, batch, self.options["check_every"])
        log = train(subject, self.options["steps"], batches=[batch], lr=self.options["lr"], deadline=ctx.deadline, monitor=stop)
        metrics = stop.passed or self.batch_metrics(subject, batch, log.losses[0], log.losses[-1], len(log.losses))
        return Measurement(metrics=metrics, figures=lambda: [loss_curve(log.losses)])

    def batch_metrics(self, subject: Subject, batch, initial: float, final: float, steps: int) -> dict:
        """Loss drop and, by task, PSNR or accuracy on the memorised batch."""
        metrics = {"initial_loss": initial, "final_loss": final, "loss_drop": 1.0 - final / initial if initial > 0 else 0.0,
                   "steps": steps}
        task = subject.task
        if (task.kind == "regression" and task.value_range is not None) or task.is_categorical:
            prediction, target = collect_predictions(subject, batches=[batch])
            if task.is_categorical:
                metrics["accuracy"] = accuracy(prediction, target)
            else:
                metrics["psnr_db"] = psnr_db(mse(prediction, target), data_range(subject))
        return metrics

    def judge(self, measurement: Measurement) -> list[Finding]:
        """One finding: memorised (pass), or not (warn/fail, with what to look at); NaN loss fails."""
        m, o = measurement.metrics, self.options
        if m["final_loss"] != m["final_loss"]:  # NaN
            return [Finding("fail", "nonfinite", "loss became NaN while overfitting one batch: look for log/div of bad "
                            "values or a too-high LR", ("final_loss",), self.fixes, ADVICE)]
        drop = m["loss_drop"]
        by_drop = "pass" if drop >= o["pass_loss_drop"] else "warn" if drop >= o["warn_loss_drop"] else "fail"
        said, keys = f"loss fell {drop:.1%} on one batch in {m['steps']} steps", ("loss_drop", "steps")
        if "psnr_db" in m:
            status = "pass" if m["psnr_db"] >= o["pass_psnr_db"] else "warn" if m["psnr_db"] >= o["warn_psnr_db"] else "fail"
            said, keys = f"reached {m['psnr_db']:.1f} dB on one batch in {m['steps']} steps (loss fell {drop:.1%})", ("psnr_db", *keys)
        elif "accuracy" in m:
            by_accuracy = "pass" if m["accuracy"] >= o["pass_accuracy"] else "warn" if m["accuracy"] >= o["warn_accuracy"] else "fail"
            status = min(by_accuracy, by_drop, key=RANK.__getitem__)  # either one passing is enough
            said, keys = f"reached {m['accuracy']:.1%} accuracy on one batch in {m['steps']} steps (loss fell {drop:.1%})", ("accuracy", *keys)
        else:
            status = by_drop
        if status == "pass":
            return [Finding("pass", "memorised", f"can memorise a batch: {said}", keys)]
        return [Finding(status, "not-memorised", f"cannot memorise one batch: {said}; this points at a capacity, objective "
                        "or data bug", keys, self.fixes, ADVICE)]


def loss_curve(losses: list[float]) -> Figure:
    return Figure("line", "Loss on the frozen batch", {
        "series": [{"name": "loss", "x": list(range(len(losses))), "y": losses}],
        "xlabel": "step", "ylabel": "loss", "logy": min(losses) > 0,
    })
