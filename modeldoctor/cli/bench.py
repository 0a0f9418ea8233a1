"""`modeldoctor bench`: re-train baseline and patched arms and compare them."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.markup import escape

from ..core.errors import InputError
from ..engine.bench import bench as run_arms
from ..engine.diagnosis import split_names
from .common import (
    ConfigOpt,
    Debug,
    Jobs,
    LazyBar,
    Plugins,
    SubjectOpt,
    Threads,
    Trust,
    guard_output,
    handled,
    out,
    trusting,
    write_outputs,
)


def bench(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint whose subject and config are re-trained.")],
    fix: Annotated[list[str], typer.Option("--fix", help="Fixes of one patched arm, comma-separated; repeat for more arms.")],
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Training steps per run (default: the subject's recipe).")] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per arm (0, 1, ...); 3 or more gives an interval.")] = 3,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the modeldoctor.bench/1 JSON here ('-' for stdout).")] = None,
    html_path: Annotated[Optional[Path], typer.Option("--html", help="Write an HTML page with the bench and learning curves.")] = None,
    subject: SubjectOpt = None,
    config: ConfigOpt = None,
    plugin: Plugins = None,
    trust_checkpoint: Trust = False,
    jobs: Jobs = 0,
    threads: Threads = 1,
    debug: Debug = False,
) -> None:
    """Re-train a baseline arm and patched arms with the same steps and seeds; report deltas with 95% intervals."""
    from ..report import print_bench

    with handled(debug, threads):
        for path in (json_path, html_path):
            guard_output(path, checkpoint)
        arms = [split_names(text) for text in fix]
        if not any(arms):
            raise InputError("--fix needs at least one fix name")
        with trusting(trust_checkpoint, checkpoint), run_bar(runs=(1 + len(arms)) * seeds) as on_progress:
            result = run_arms(checkpoint, arms, steps=steps, seeds=seeds, jobs=jobs, subject=subject, config=config,
                              plugins=plugin or [], trust=trust_checkpoint, progress=on_progress)
        if str(json_path) != "-":
            print_bench(result, out)
        write_outputs(json_path, html_path, None, result)


@contextlib.contextmanager
def run_bar(runs: int) -> Iterator:
    """One bar over the training steps of all `runs`; yields the bench's (arm, seed, step, total) callback."""
    with LazyBar("bench") as bar:
        finished_runs = 0

        def on_progress(arm: str, seed: int, step: int, total: int) -> None:
            nonlocal finished_runs
            bar.update(total=runs * total, completed=finished_runs * total + step,
                       description=f"training [bold]{escape(str(arm))}[/] seed {seed}")
            finished_runs += step == total

        yield on_progress
