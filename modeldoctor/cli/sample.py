"""`modeldoctor sample`: train a sample patient and save its checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..engine.sampling import sample_steps, save_sample
from .common import Debug, Seed, Threads, bar_progress, handled, out


def sample(
    name: Annotated[str, typer.Argument(help="Sample patient (see `modeldoctor list`).")],
    output: Annotated[Path, typer.Option("--out", help="Where to write the trained checkpoint.")],
    healthy: Annotated[bool, typer.Option("--healthy", help="Train the healthy twin instead of the failing variant.")] = False,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Training steps (default: the sample's recipe).")] = None,
    seed: Seed = 0,
    threads: Threads = 1,
    debug: Debug = False,
) -> None:
    """Train a sample patient (failing by default, or its healthy twin) and save its checkpoint."""
    variant = "healthy" if healthy else "failing"
    with handled(debug, threads):
        total = sample_steps(name, healthy=healthy, steps=steps)  # sizes the bar; rejects an unknown name
        with bar_progress() as progress:
            task = progress.add_task(f"training {variant} {name}", total=total)
            save_sample(name, output, healthy=healthy, steps=steps, seed=seed,
                        on_step=lambda step, loss: progress.update(task, completed=step + 1))
        out.print(f"Wrote [bold]{escape(str(output))}[/] ({variant} {name})", highlight=False)
