"""lr-range: an LR range test (Smith 2017) places the recipe's learning rate on the loss-vs-LR curve."""
from __future__ import annotations

import math

import numpy as np

from ..core.check import Check, CheckContext
from ..core.registry import register_check
from ..core.results import Figure, Finding, Measurement
from ..core.subject import Subject
from ..probes.training import StopTraining, train


def ema_smooth(values: list[float], beta: float) -> list[float]:
    """Exponential moving average with bias correction (fastai/Lightning): s_i = a_i / (1 - beta^(i+1))."""
    average, smoothed = 0.0, []
    for i, value in enumerate(values):
        average = beta * average + (1 - beta) * value
        smoothed.append(average / (1 - beta ** (i + 1)))
    return smoothed


@register_check
class LRRange(Check):
    """LR range test: is the recipe's learning rate where the loss falls fastest, or near divergence?

    What it checks
    Trains a copy of the model on the subject's training batches with its own loss, optimizer and
    gradient clipping while the learning rate grows exponentially from `min_lr` to `max_lr` over
    `steps` steps (the sweep widens to recipe LR / 3 … recipe LR × 3 when the recipe LR lies
    outside it). Each loss is paired with the LR of the update before it, and the curve is
    smoothed (EMA, β = 0.98, bias-corrected). The run stops when the smoothed loss exceeds
    `early_stop_threshold` × its best or is not finite; the LR there is the divergence LR.
    From the smoothed curve it reads the steepest-descent LR (most negative d loss / d log LR,
    a central difference over ±5% of the points, ignoring the first `skip_start` points, up to
    the loss minimum) and the LR at the minimum.
    Usable range: steepest / 10 … min(divergence / 3, LR at the minimum). Suggested LR: the
    steepest-descent LR, capped at the top of the usable range (LR at minimum / 10 when the loss
    never falls).
    Fails when the recipe LR is at or above the divergence LR; warns when it is above
    divergence / `high_margin` (explodes → decrease) or below steepest / `low_margin` (plateaus →
    increase); passes otherwise.

    Why it matters
    The learning rate is the hyperparameter that matters most. Seed 000's advice: "if loss
    plateaus early → increase learning rate; if loss explodes → decrease learning rate or add
    gradient clipping". The range test (Smith, WACV 2017; Lightning `LearningRateFinder`, fastai
    `lr_find`) measures both ends in one short run instead of guessing from a log.

    Evidence
    The smoothed loss against the LR (log x) with the recipe LR, the suggested LR and the
    divergence LR marked. Metrics: recipe_lr, recipe_optimizer, initial_loss, steps_run,
    sweep_min_lr, sweep_max_lr, divergence_lr (None when the loss never diverged), steepest_lr,
    lr_at_min_loss, min_loss, usable_low_lr, usable_high_lr, suggested_lr.

    Fixes
    Mostly the LR itself: the summary says which way to move it and by about how much. When the
    LR is too high, `warmup-cosine` (if the recipe has no warmup) is prescribed as well, and for
    SGD `grad-clip` (if the recipe does not clip): both tame the violent updates that blow the
    loss up (seeds 000, 001). Clipping is not prescribed for Adam, whose step is about the LR
    whatever the gradient's size. The test judges the peak LR: a schedule added by a fix does
    not change its verdict, only the training that follows (compare with `bench`).
    Pitfalls: the result depends on batch size and on the optimizer; BatchNorm statistics are
    polluted, which is harmless here since the test runs on a copy. On a trained model the loss
    may not fall at any LR: there is then no steepest descent, and only divergence is judged.

    Options
    min_lr (1e-6), max_lr (1.0), steps (100): the exponential sweep (Lightning: 1e-8, 1, 100).
    beta (0.98): EMA smoothing of the loss. early_stop_threshold (4.0): stop when the smoothed
    loss exceeds this multiple of its best. skip_start (10): first curve points ignored for the
    steepest descent.
    high_margin (3.0): warn when recipe LR > divergence LR / high_margin.
    low_margin (30.0): warn when recipe LR < steepest LR / low_margin (REFERENCE §8, heuristic).
    """

    slug = "lr-range"
    code = "MD006"
    title = "LR range test"
    fixes = ("warmup-cosine", "grad-clip")
    default_options = {"min_lr": 1e-6, "max_lr": 1.0, "steps": 100, "beta": 0.98, "early_stop_threshold": 4.0,
                       "skip_start": 10, "high_margin": 3.0, "low_margin": 30.0}

    def requires(self, subject: Subject) -> str | None:
        if not any(p.requires_grad for p in subject.model.parameters()):
            return "the model has no trainable parameters"
        return None

    def measure(self, subject: Subject, ctx: CheckContext) -> Measurement:
        o, recipe_lr = self.options, float(subject.recipe.lr)
        low, high = min(o["min_lr"], recipe_lr / 3), max(o["max_lr"], recipe_lr * 3)
        steps = max(3, int(o["steps"]))

        def lr_at(step: int) -> float:  # exponential from `low` (step 0) to `high` (step steps - 1)
            return low * (high / low) ** (min(step, steps - 1) / (steps - 1))

        raw: list[float] = []  # loss after the update at lrs[i]: losses[i + 1] of the run
        state = {"average": 0.0, "best": math.inf, "diverged": False}

        def on_step(step: int, loss: float) -> None:
            if step == 0:
                return  # the loss before any update
            raw.append(loss)
            state["average"] = o["beta"] * state["average"] + (1 - o["beta"]) * loss
            smoothed = state["average"] / (1 - o["beta"] ** len(raw))  # = ema_smooth(raw, beta)[-1]
            if not math.isfinite(smoothed) or smoothed > o["early_stop_threshold"] * state["best"]:
                state["diverged"] = True
                raise StopTraining
            state["best"] = min(state["best"], smoothed)

        log = train(subject, steps + 1, lr_at=lr_at, deadline=ctx.deadline, on_step=on_step)
        lrs = log.lrs[: len(raw)]  # (n,) the LR of the update that produced each loss in `raw`
        smoothed = ema_smooth(raw, o["beta"])
        metrics = {"recipe_lr": recipe_lr, "recipe_optimizer": subject.recipe.optimizer,
                   "initial_loss": log.losses[0], "steps_run": len(raw), "sweep_min_lr": low, "sweep_max_lr": high,
                   "divergence_lr": lrs[-1] if state["diverged"] else None}
        metrics.update(read_curve(lrs, smoothed, state["diverged"], int(o["skip_start"])))
        metrics.update(usable_range(metrics, o["high_margin"]))
        return Measurement(metrics=metrics, figures=lambda: [self.figure(lrs, smoothed, metrics)])

    def figure(self, lrs: list[float], smoothed: list[float], m: dict) -> Figure:
        return Figure("line", "LR range test: smoothed loss vs learning rate", {
            "series": [{"name": f"smoothed loss (EMA β={self.options['beta']:g})", "x": lrs, "y": smoothed}],
            "xlabel": "learning rate", "ylabel": "loss", "logx": True,
            "logy": bool(smoothed) and all(0 < v < math.inf for v in smoothed),
            "vlines": [{"x": x, "label": f"{label} {x:.2g}"} for label, x in (
                ("recipe LR", m["recipe_lr"]), ("suggested", m["suggested_lr"]),
                ("divergence", m["divergence_lr"])) if x is not None],
        })

    def judge(self, measurement: Measurement) -> list[Finding]:
        """One finding: diverged at once, LR too high (near or past divergence), too low, or sensible."""
        m, o = measurement.metrics, self.options
        lr, divergence, steepest, suggested = m["recipe_lr"], m["divergence_lr"], m["steepest_lr"], m["suggested_lr"]
        too_high = divergence is not None and lr > divergence / o["high_margin"]
        # Clipping bounds SGD's step (lr × gradient), not Adam's, whose step is about lr whatever the gradient.
        calming = (("warmup-cosine",) + (("grad-clip",) if m["recipe_optimizer"] == "sgd" else ())) if too_high else ()
        if not math.isfinite(m["initial_loss"]) or m["steps_run"] < 2:
            return [Finding("fail", "diverged-at-once", "the loss diverged at once, even at the smallest LR: check the data, "
                            "the loss and the init", ("initial_loss", "steps_run"), calming)]
        move = f" to about {suggested:.2g} ({factor(lr, suggested)})" if suggested else ""
        said = ("recipe_lr", "divergence_lr", "suggested_lr")
        if divergence is not None and lr >= divergence:
            return [Finding("fail", "lr-too-high", f"recipe LR {lr:.3g} is past where the loss diverged ({divergence:.3g}): "
                            f"decrease it{move}", said, calming)]
        if too_high:
            return [Finding("warn", "lr-too-high", f"recipe LR {lr:.3g} is within {o['high_margin']:g}× of divergence "
                            f"({divergence:.3g}): the loss may explode; decrease it{move}", said, calming)]
        if steepest is not None and lr < steepest / o["low_margin"]:
            return [Finding("warn", "lr-too-low", f"recipe LR {lr:.3g} is {steepest / lr:.0f}× below the steepest-descent LR "
                            f"({steepest:.3g}): the loss will plateau early; increase it{move}",
                            ("recipe_lr", "steepest_lr", "suggested_lr"))]
        where = ", ".join(f"{name} {value:.2g}" for name, value in (("steepest descent", steepest),
                          ("divergence", divergence)) if value is not None)
        return [Finding("pass", "sensible", f"recipe LR {lr:.3g} is in a sensible range "
                        f"({where or 'no descent or divergence found'})", ("recipe_lr", "steepest_lr", "divergence_lr"))]


def read_curve(lrs: list[float], smoothed: list[float], diverged: bool, skip_start: int) -> dict:
    """Steepest-descent LR and LR at the loss minimum on the smoothed curve (None when undefined)."""
    finite = smoothed[:-1] if diverged else smoothed  # the point that triggered the stop is not a valid minimum
    if len(finite) < 3:
        return {"steepest_lr": None, "lr_at_min_loss": None, "min_loss": None}
    y = np.asarray(finite, dtype=float)  # (n,)
    log_lr = np.log(np.asarray(lrs[: len(y)], dtype=float))  # (n,)
    best = int(np.argmin(y))
    start = skip_start if best - skip_start >= 2 else 0
    # d loss / d log LR up to the minimum, as a central difference over ±`window` points: a slope
    # between neighbours is dominated by batch noise where the curve is flat.
    window = max(1, len(y) // 20)
    ahead, behind = np.minimum(np.arange(len(y)) + window, len(y) - 1), np.maximum(np.arange(len(y)) - window, 0)
    slope = ((y[ahead] - y[behind]) / (log_lr[ahead] - log_lr[behind]))[start : best + 1]
    steepest = lrs[start + int(np.argmin(slope))] if slope.size and slope.min() < 0 else None
    return {"steepest_lr": steepest, "lr_at_min_loss": lrs[best], "min_loss": float(y[best])}


def usable_range(m: dict, margin: float = 3.0) -> dict:
    """Usable range steepest/10 … min(divergence/margin, LR at minimum) and the suggested LR inside it."""
    tops = [v for v in (m["divergence_lr"] / margin if m["divergence_lr"] else None, m["lr_at_min_loss"]) if v]
    top = min(tops) if tops else None
    bottom = m["steepest_lr"] / 10 if m["steepest_lr"] else None
    if m["steepest_lr"] is not None:
        suggested = min(m["steepest_lr"], top) if top else m["steepest_lr"]
    else:
        suggested = m["lr_at_min_loss"] / 10 if m["lr_at_min_loss"] else None
    return {"usable_low_lr": bottom, "usable_high_lr": top, "suggested_lr": suggested}


def factor(current: float, target: float) -> str:
    """'10× lower' / '3× higher' for people."""
    ratio = target / current
    times = 1 / ratio if ratio < 1 else ratio
    text = f"{times:.2g}" if times < 100 else f"{float(f'{times:.2g}'):.0f}"  # 4.6, 12, 4600
    return f"{text}× {'lower' if ratio < 1 else 'higher'}"
