"""What the commands share: option types, the error barrier, output files, progress bars, plugin loading."""
from __future__ import annotations

import contextlib
import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..core.errors import InputError
from ..engine.diagnosis import load_plugin_specs

out = Console()
err = Console(stderr=True)

Debug = Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")]
Plugins = Annotated[Optional[list[str]], typer.Option("--plugin", help="Python file or module that registers subjects, checks or fixes (repeatable).")]
SubjectOpt = Annotated[Optional[str], typer.Option("--subject", help="Registered subject to build (needed when the checkpoint does not name one).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="JSON or TOML file whose keys override the subject config.")]
Trust = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow pickled Python code in the checkpoint. It RUNS that code: only for files you trust.")]
Threads = Annotated[int, typer.Option("--threads", min=1, help="Torch CPU threads. Tiny models run fastest on one (no OpenMP spin-waiting).")]
Seed = Annotated[int, typer.Option("--seed", help="Base random seed (results are reproducible for a given seed).")]
Jobs = Annotated[int, typer.Option("--jobs", min=0, help="Training runs in parallel, each in its own process with one thread; 0: one per CPU core.")]


@contextlib.contextmanager
def handled(debug: bool, threads: int = 1) -> Iterator[None]:
    """Set up torch threads; turn InputError into one stderr line + exit 2, crashes into exit 3."""
    import torch

    torch.set_num_threads(threads)
    try:
        yield
    except InputError as error:
        if debug:
            raise
        err.print(f"modeldoctor: error: {error}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as error:
        if debug:
            raise
        err.print(f"modeldoctor: internal error: {type(error).__name__}: {error} (re-run with --debug for the traceback)",
                  markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(3) from None


def load_plugins(plugins: list[str] | None) -> None:
    """The built-in and installed plugins, then each --plugin."""
    load_plugin_specs(plugins or [])


@contextlib.contextmanager
def trusting(trust: bool, path: Path) -> Iterator[None]:
    """Print our own --trust-checkpoint warning once, and hide the loader's copy of it."""
    if trust:
        err.print(f"[bold yellow]warning:[/] --trust-checkpoint: any code pickled in {escape(str(path))} will run.", highlight=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"loading .* with --trust-checkpoint")
        yield


def load(path: Path, subject: str | None, config: Path | None, plugins: list[str] | None, trust: bool):
    """The checkpoint at `path` as a LoadedCheckpoint (for the commands that patch it)."""
    from ..engine.checkpoint import load_checkpoint, read_config_file

    load_plugins(plugins)
    overrides = read_config_file(config) if config else None
    with trusting(trust, path):
        return load_checkpoint(path, subject=subject, config=overrides, trust=trust)


def guard_output(output: Path | None, *inputs: Path) -> None:
    """modeldoctor never writes over the user's input file."""
    if output is None or str(output) == "-":
        return
    for source in inputs:
        if source.exists() and output.resolve() == source.resolve():
            raise InputError(f"refusing to write {output}: it is the input file (pick another --out/--json/--html)")


def write_outputs(json_path: Path | None, html_path: Path | None, report: dict | None, bench: dict | None) -> None:
    from ..engine.files import atomic_write_text, write_json
    from ..report import render_page

    if json_path is not None:
        data = report if bench is None else bench if report is None else {"report": report, "bench": bench}
        if str(json_path) == "-":
            sys.stdout.write(json.dumps(data, indent=2) + "\n")
        else:
            write_json(json_path, data)
            written("JSON written to", json_path)
    if html_path is not None:
        atomic_write_text(html_path, render_page(report, bench))
        written("HTML report written to", html_path)


def written(what: str, path: Path) -> None:
    err.print(f"{what} [bold]{escape(str(path))}[/]", highlight=False)


def bar_progress(spinner: bool = False) -> Progress:
    """A transient progress bar on stderr (stdout stays clean for tables and `--json -`)."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    return Progress(*([SpinnerColumn()] if spinner else []), *columns, console=err, transient=True)


class LazyBar:
    """A `bar_progress` with one task that appears on its first update.

    Loading and validation run before the first update, so a bad input leaves stderr with its one
    error line and nothing else (a stopped bar leaves an empty line behind).
    """

    def __init__(self, description: str = "", spinner: bool = False) -> None:
        self.progress = bar_progress(spinner)
        self.task = self.progress.add_task(description, total=None)
        self.started = False

    def update(self, *, advance: float | None = None, **fields) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        self.progress.update(self.task, advance=advance, **fields)

    def stop(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False

    def __enter__(self) -> "LazyBar":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
