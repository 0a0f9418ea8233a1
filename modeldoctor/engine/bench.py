"""Bench: re-train a baseline arm and patched arms with the same budget and seeds, then compare.

Every arm starts from a fresh initialisation of the checkpoint's subject and config (the
checkpoint's own recorded fixes included), so the only difference between arms is the fixes.
Seeds are shared, so comparisons use paired differences and a Student-t 95% interval.
Schema `modeldoctor.bench/1`: see DESIGN.md; this adds "subject", "trivial", "curves" and, per arm,
"side_metrics" {name: {"values", "mean"}}: secondary measures of each trained run where the subject
has what they need (today `routing_entropy`, the mean H(f)/log E of its MoE layers).
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..core.errors import InputError
from ..core.fix import apply_fixes, parse_fix_list
from ..core.registry import build_subject, load_plugin
from ..core.results import clean
from ..core.version import __version__
from ..probes.numerics import mse, paired_interval, psnr_db, trivial_scores
from ..probes.retrieval_metrics import chance_baseline
from ..probes.routing import mean_routing_entropy
from ..probes.training import collect_predictions, data_range, evaluate, seed_everything, target_mean, train
from .diagnosis import load_plugin_specs, load_target

# (arm name, seed, step, total steps)
BenchProgress = Callable[[str, int, int, int], None]


@dataclass
class Arm:
    name: str
    fixes: list[str]


def trivial_baseline(subject) -> dict | None:
    """The task metric of the trivial predictor, where defined.

    psnr_db: predict the training-target mean; mae: the training median; accuracy: the majority class;
    retrieval: chance (random ranking).
    """
    if subject.task.kind == "retrieval":
        return chance_baseline(subject)
    metric = subject.task.metric
    if metric not in ("psnr_db", "mae", "accuracy"):
        return None
    prediction, target = collect_predictions(subject)
    if metric == "psnr_db":
        mean = target_mean(subject)
        return {"name": "mean predictor", "value": psnr_db(mse(mean.expand_as(target), target), data_range(subject))}
    _, train_target = collect_predictions(subject, batches=itertools.islice(subject.train_batches, 20))
    kind = "classification" if subject.task.is_categorical else "regression"
    scores = trivial_scores(kind, prediction, target, train_target, subject.task.num_classes)
    if metric == "mae":
        return {"name": "median predictor", "value": scores["median_mae"]}
    return {"name": "majority class", "value": scores["majority_accuracy"]}


Outcome = tuple[float, list[float], dict[str, float]]  # task metric, losses, side metrics


def side_metrics(subject) -> dict[str, float]:
    """Secondary measures of a trained subject, where it has what they need."""
    entropy = mean_routing_entropy(subject)
    return {} if entropy is None else {"routing_entropy": entropy}


def run_all(runs: list[Run], progress: BenchProgress | None, names: list[str], jobs: int) -> list[Outcome]:
    """Outcomes of `runs`, in order: in this process (step-level progress) or in `jobs` workers."""
    if jobs <= 1:
        outcomes = []
        for run, name in zip(runs, names):
            def on_step(step, _loss, name=name, run=run):
                if progress:
                    progress(name, run.seed, step + 1, run.steps)
            outcomes.append(train_and_evaluate(run, on_step))
        return outcomes
    # spawn, not fork: forking a process that already ran OpenMP code can deadlock.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_worker, run, 1): (run, name) for run, name in zip(runs, names)}
        for future in as_completed(futures):
            run, name = futures[future]
            if progress:
                progress(name, run.seed, run.steps, run.steps)
        return [future.result() for future in futures]  # dicts keep submission order


def curve_points(losses: list[float], points: int = 100) -> tuple[list[int], list[float]]:
    """Subsample a loss curve to about `points` window means, for plotting."""
    stride = max(1, len(losses) // points)
    steps = list(range(0, len(losses), stride))
    return steps, [statistics.fmean(losses[s : s + stride]) for s in steps]


@dataclass(frozen=True)
class Run:
    """One training run of the bench: everything a worker process needs to repeat it."""

    subject_name: str
    config: dict
    fixes: tuple[str, ...]
    seed: int
    steps: int | None
    plugins: tuple[str, ...] = ()


def train_and_evaluate(run: Run, on_step: Callable[[int, float], None] | None = None) -> Outcome:
    """Fresh initialisation under `run.seed`, the fixes, training, then the task metric and side metrics."""
    seed_everything(run.seed)
    subject = apply_fixes(build_subject(run.subject_name, run.config), list(run.fixes), copy=False)
    log = train(subject, run.steps, on_step=on_step)
    return evaluate(subject), log.losses, side_metrics(subject)


def _worker(run: Run, threads: int) -> Outcome:
    """Entry point of a worker process: import the plugins the subject may need, then run."""
    torch.set_num_threads(threads)
    for plugin in run.plugins:
        load_plugin(plugin)
    return train_and_evaluate(run)


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
    jobs: int = 1,
    plugins: list[str] | None = None,
) -> dict:
    """Train every arm once per seed and return the `modeldoctor.bench/1` dict.

    jobs > 1 trains runs in that many worker processes (one torch thread each). The workers
    rebuild the subject from its registered name, so it must be built in, installed through an
    entry point, or loaded from `plugins` (files or modules, as --plugin takes them).
    """
    base_fixes = list(base_fixes or [])
    probe = apply_fixes(build_subject(subject_name, config), base_fixes, copy=False)
    total = probe.recipe.steps if steps is None else steps
    runs = [Run(subject_name, config, tuple(base_fixes + arm.fixes), seed, total, tuple(plugins or []))
            for arm in arms for seed in seeds]
    outcomes = run_all(runs, progress, [arm.name for arm in arms for _ in seeds], jobs)
    results, curves = [], {}
    for index, arm in enumerate(arms):
        values, losses, sides = zip(*outcomes[index * len(seeds) : (index + 1) * len(seeds)])
        x, _ = curve_points(losses[0])
        curves[arm.name] = {"steps": x, "loss": [curve_points(run)[1] for run in losses]}
        results.append({
            "name": arm.name, "fixes": arm.fixes, "values": list(values),
            "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "side_metrics": {name: {"values": [side[name] for side in sides], "mean": statistics.fmean(side[name] for side in sides)}
                             for name in sides[0]},
        })
    metric, higher, trivial = probe.task.metric, probe.task.higher_is_better, trivial_baseline(probe)
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


def patched_arms(fixes: str | Sequence[str] | Sequence[Sequence[str]]) -> list[Arm]:
    """The baseline arm and one patched arm per fix list ("a,b" or ["a", "b"]: one arm; [[...], [...]]: several)."""
    if isinstance(fixes, str) or all(isinstance(item, str) for item in fixes):
        fixes = [fixes]
    lists = [parse_fix_list(item) for item in fixes]  # raises InputError for unknown names
    if not any(lists):
        raise InputError("bench needs at least one fix name")
    return [Arm("baseline", [])] + [Arm("patched" if len(lists) == 1 else f"patched-{i + 1}", names)
                                    for i, names in enumerate(lists)]


def bench(
    target,
    fixes: str | Sequence[str] | Sequence[Sequence[str]],
    *,
    steps: int | None = None,
    seeds: int | Sequence[int] = 3,
    jobs: int = 0,
    subject: str | None = None,
    config: dict | str | Path | None = None,
    plugins: Iterable[str] = (),
    trust: bool = False,
    progress: BenchProgress | None = None,
) -> dict:
    """Re-train a baseline arm and patched arms of `target` and return the `modeldoctor.bench/1` dict.

    target: a checkpoint path (`subject`, `config`, `trust` as for `diagnose`), a LoadedCheckpoint,
    a Subject or an Evidence with a subject; every arm starts from a fresh initialisation of its
    registered subject and config. fixes: one fix list for one patched arm, or a list of lists.
    seeds: how many (0, 1, ...) or which. jobs: worker processes, 0 for one per CPU core.
    progress: called (arm, seed, step, total) as runs train.
    """
    plugins = list(plugins or ())
    load_plugin_specs(plugins)
    evidence, info = load_target(target, subject=subject, config=config, trust=trust)
    if evidence.subject is None:
        raise InputError("bench needs a subject to re-train: a checkpoint that names a registered subject, or --subject NAME")
    arms = patched_arms(fixes)
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    live = evidence.subject
    return run_bench(live.name, live.config, arms, base_fixes=live.fixes_applied, seeds=seeds, steps=steps,
                     progress=progress, subject_data=info,
                     jobs=jobs or min(os.cpu_count() or 1, len(arms) * len(seeds)),
                     # workers import the plugins again: pass files as absolute paths, modules as named
                     plugins=[str(Path(p).resolve()) if Path(p).exists() else p for p in plugins])
