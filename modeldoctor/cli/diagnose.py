"""`modeldoctor diagnose`: run the checks on a checkpoint and render the report."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.markup import escape

from ..core.errors import InputError
from ..core.registry import CHECKS
from ..core.results import FAIL_ON_LEVELS, exit_code
from ..engine.diagnosis import diagnose as run_diagnosis
from ..engine.diagnosis import split_names
from .common import (
    ConfigOpt,
    Debug,
    LazyBar,
    Plugins,
    Seed,
    SubjectOpt,
    Threads,
    Trust,
    guard_output,
    handled,
    out,
    trusting,
    write_outputs,
)


def diagnose(
    checkpoint: Annotated[Path, typer.Argument(help=(
        "What to diagnose: a state dict or training checkpoint (.pt, .pth, .bin), a Lightning .ckpt, a .safetensors file, "
        "a Hugging Face model folder, or a modeldoctor checkpoint. Without a subject it is diagnosed from its weights alone."))],
    subject: SubjectOpt = None,
    config: ConfigOpt = None,
    plugin: Plugins = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the modeldoctor.report/2 JSON here ('-' for stdout).")] = None,
    html_path: Annotated[Optional[Path], typer.Option("--html", help="Write the self-contained HTML report here.")] = None,
    against: Annotated[Optional[Path], typer.Option("--against", help=(
        "A checkpoint to compare with (the initial or pre-fine-tuning weights): tensors that did not change are reported."))] = None,
    spectral: Annotated[bool, typer.Option("--spectral", help="Also fit the eigenvalue spectrum of every 2-D weight (slower; bounded on large layers).")] = False,
    fail_on: Annotated[str, typer.Option("--fail-on", help="Exit 1 when any check reaches this level: fail, warn or never.")] = "fail",
    checks: Annotated[Optional[str], typer.Option("--checks", help="Comma-separated checks to run (default: all).")] = None,
    budget: Annotated[float, typer.Option("--budget", min=1, help="Time budget per check, in seconds.")] = 120.0,
    seed: Seed = 0,
    trust_checkpoint: Trust = False,
    threads: Threads = 1,
    debug: Debug = False,
) -> None:
    """Run the battery of checks on a checkpoint and report the findings, their evidence and fixes.

    Any checkpoint works: without a subject (named in a modeldoctor checkpoint, or --subject) the weight
    checks run on its tensors alone (no model class, no data), including the optimizer state a training
    checkpoint carries; with one, the weight and subject checks run together in one report.
    """
    from ..report import print_report

    with handled(debug, threads):
        if fail_on not in FAIL_ON_LEVELS:
            raise InputError(f"--fail-on must be fail, warn or never (got {fail_on!r})")
        inputs = [path for path in (checkpoint, against, config) if path is not None]
        guard_output(json_path, *inputs)
        guard_output(html_path, *inputs)
        names = split_names(checks)
        options = {"spectral-shape": {"enabled": True}} if spectral else None
        with trusting(trust_checkpoint, checkpoint), check_bar(names) as on_event:
            report = run_diagnosis(checkpoint, subject=subject, config=config, plugins=plugin or [], trust=trust_checkpoint,
                                   against=against, checks=names, options=options, seed=seed, budget_s=budget,
                                   figures=html_path is not None, progress=on_event)
        if str(json_path) != "-":
            print_report(report, out)
        write_outputs(json_path, html_path, report, None)
        code = exit_code(report, fail_on)
        if code:
            raise typer.Exit(code)


@contextlib.contextmanager
def check_bar(names: list[str]) -> Iterator:
    """A spinner and bar over the checks; yields the runner's (event, slug, result) callback."""
    with LazyBar("diagnosing", spinner=True) as bar:

        def on_event(event: str, slug: str, result) -> None:
            if event == "start":  # plugins are loaded by now, so the registry counts every check
                bar.update(total=len(names) or len(CHECKS), description=f"running [bold]{escape(str(slug))}[/]")
            else:
                bar.update(advance=1)

        yield on_event
