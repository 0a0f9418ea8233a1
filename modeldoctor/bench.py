"""Bench: re-train a baseline arm and patched arms with the same budget and seeds, then compare.

Every arm starts from a fresh initialisation of the checkpoint's subject and config (the
checkpoint's own recorded fixes included), so the only difference between arms is the fixes.
Seeds are shared, so comparisons use paired differences and a Student-t 95% interval.
Schema `modeldoctor.bench/1`: see DESIGN.md; this adds "subject", "trivial" and "curves".
"""
from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from typing import Callable

import torch

from . import __version__
from .fix import apply_fixes
from .numerics import mse, paired_interval, psnr_db
from .registry import build_subject
from .results import clean
from .training import collect_predictions, data_range, evaluate, seed_everything, target_mean, train

# (arm name, seed, step, total steps)
BenchProgress = Callable[[str, int, int, int], None]


@dataclass
class Arm:
    name: str
    fixes: list[str]


def trivial_baseline(subject) -> dict | None:
    """The task metric of the trivial predictor, where defined.

    psnr_db: predict the training-target mean; accuracy: predict the majority training class.
    """
    _, target = collect_predictions(subject)
    if subject.task.metric == "psnr_db":
        mean = target_mean(subject)
        return {"name": "mean predictor", "value": psnr_db(mse(mean.expand_as(target), target), data_range(subject))}
    if subject.task.metric == "accuracy":
        _, train_target = collect_predictions(subject, batches=itertools.islice(subject.train_batches, 20))
        majority = torch.mode(train_target).values
        return {"name": "majority class", "value": float((target == majority).double().mean())}
    return None


def curve_points(losses: list[float], points: int = 100) -> tuple[list[int], list[float]]:
    """Subsample a loss curve to about `points` window means, for plotting."""
    stride = max(1, len(losses) // points)
    steps = list(range(0, len(losses), stride))
    return steps, [statistics.fmean(losses[s : s + stride]) for s in steps]


def run_bench(
    subject_name: str,
    config: dict,
    arms: list[Arm],
    *,
    base_fixes: list[str] | None = None,
    seeds: list[int] = (0, 1, 2),
    steps: int | None = None,
    progress: BenchProgress | None = None,
    subject_data: dict | None = None,
) -> dict:
    """Train every arm once per seed and return the `modeldoctor.bench/1` dict."""
    base_fixes = list(base_fixes or [])
    results, curves, trivial, metric, higher, total = [], {}, None, None, True, steps
    for arm in arms:
        values, losses = [], []
        for seed in seeds:
            seed_everything(seed)
            subject = apply_fixes(build_subject(subject_name, config), base_fixes + arm.fixes, copy=False)
            metric, higher = subject.task.metric, subject.task.higher_is_better
            total = subject.recipe.steps if steps is None else steps
            on_step = None
            if progress:
                def on_step(step, _loss, arm=arm.name, seed=seed, total=total):
                    progress(arm, seed, step + 1, total)
            log = train(subject, total, on_step=on_step)
            values.append(evaluate(subject))
            losses.append(log.losses)
            if trivial is None:
                trivial = trivial_baseline(subject)
        x, _ = curve_points(losses[0])
        curves[arm.name] = {"steps": x, "loss": [curve_points(run)[1] for run in losses]}
        results.append({
            "name": arm.name, "fixes": arm.fixes, "values": values,
            "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        })
    baseline = results[0]
    comparisons = []
    for arm in results[1:]:
        deltas = [a - b for a, b in zip(arm["values"], baseline["values"])]
        low, high = paired_interval(deltas)
        excludes_zero = bool(low > 0 or high < 0)
        improved = (statistics.fmean(deltas) > 0) == higher
        comparisons.append({
            "arm": arm["name"], "baseline": baseline["name"], "delta": statistics.fmean(deltas),
            "ci95": [low, high], "values": deltas, "significant": excludes_zero, "improved": improved,
        })
    return clean({
        "schema": "modeldoctor.bench/1",
        "tool_version": __version__,
        "metric": metric,
        "higher_is_better": higher,
        "subject": subject_data or {"name": subject_name, "config": config, "fixes_applied": base_fixes},
        "budget": {"steps": total, "seeds": list(seeds)},
        "arms": results,
        "comparisons": comparisons,
        "trivial": trivial,
        "curves": curves,
    })
