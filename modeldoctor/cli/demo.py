"""`modeldoctor demo`: the whole session on a sample patient, one stage rule and bar at a time."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..engine.demo import demo as run_demo
from .common import Debug, Jobs, LazyBar, Threads, handled, out, written


def demo(
    name: Annotated[str, typer.Argument(help="Sample patient to demonstrate.")] = "sparse-field",
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for the checkpoint and reports.")] = Path("reports"),
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per bench arm.")] = 3,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Training steps (default: the sample's recipe).")] = None,
    jobs: Jobs = 0,
    threads: Threads = 1,
    debug: Debug = False,
) -> None:
    """Sample a failing patient, diagnose it, bench the prescribed fixes, and write the report."""
    from ..report import render_page

    with handled(debug, threads):
        started = time.monotonic()
        with StageView() as view:
            done = run_demo(name, out_dir, seeds=seeds, steps=steps, jobs=jobs, on_stage=view.stage, progress=view.tick,
                            on_result=view.show, render_page=render_page)
        written("JSON written to", done["json"])
        written("HTML report written to", done["html"])
        out.print(f"Done in {time.monotonic() - started:.0f}s. Open [bold]{escape(str(done['html']))}[/] in a browser.",
                  highlight=False)


class StageView:
    """A rule per stage, a transient bar within it, and each result's table as soon as it is ready."""

    def __init__(self) -> None:
        self.bar: LazyBar | None = None

    def stage(self, index: int, total: int, text: str) -> None:
        self.close()
        out.rule(f"[bold]{index}/{total}[/] {escape(text)}")
        self.bar = LazyBar(escape(text), spinner=index == 2)  # the diagnosis, as `diagnose` shows it

    def tick(self, done: int, total: int, text: str) -> None:
        if self.bar is not None:
            self.bar.update(completed=done, total=total, description=escape(text))

    def show(self, kind: str, data: dict) -> None:
        from ..report import print_bench, print_report

        self.close()
        (print_report if kind == "report" else print_bench)(data, out)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> "StageView":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
