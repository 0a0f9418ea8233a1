"""`demo`: the whole session on a sample patient, as `modeldoctor demo` runs it.

Train the failing variant of a sample, diagnose it (with figures), bench the fixes the diagnosis
prescribes, and write `<name>-failing.pt`, `<name>-report.json` and `<name>-report.html` to `out_dir`.
The HTML page comes from the report layer, which sits above this one: the caller passes its
renderer as `render_page` (`modeldoctor.demo` and the command line do).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .bench import bench
from .checkpoint import load_checkpoint
from .diagnosis import diagnose
from .files import atomic_write_text, write_json
from .runner import select_checks
from .sampling import sample_steps, save_sample

StageFn = Callable[[int, int, str], None]  # (stage index from 1, number of stages, what it does)
DemoProgress = Callable[[int, int, str], None]  # (units done, units in this stage, what runs now)
ResultFn = Callable[[str, dict], None]  # ("report" | "bench", its dict), as soon as it is ready
PageFn = Callable[[dict | None, dict | None], str]  # (report, bench) -> one HTML page

STAGES = 3


def demo(
    name: str = "sparse-field",
    out_dir: str | Path = "reports",
    *,
    seeds: int = 3,
    steps: int | None = None,
    jobs: int = 0,
    on_stage: StageFn | None = None,
    progress: DemoProgress | None = None,
    on_result: ResultFn | None = None,
    render_page: PageFn | None = None,
) -> dict:
    """Run the demo and return {"report", "bench", "checkpoint", "json", "html"}.

    report and bench are the dicts (bench is None when nothing was prescribed); checkpoint, json
    and html are the paths written (html is None without `render_page`). steps: training steps
    of the sample and of each bench run (default: the recipe). on_stage, progress and on_result
    let a caller show each stage, a bar within it, and each result as it comes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = on_stage or (lambda index, total, text: None)
    tick = progress or (lambda done, total, text: None)
    shown = on_result or (lambda kind, data: None)

    checkpoint = out_dir / f"{name}-failing.pt"
    total_steps = sample_steps(name, steps=steps)  # also rejects an unknown sample before any output
    stage(1, STAGES, f"training the failing {name} sample")
    save_sample(name, checkpoint, healthy=False, steps=steps, seed=0,
                on_step=lambda step, loss: tick(step + 1, total_steps, f"training failing {name}"))

    loaded = load_checkpoint(checkpoint)
    stage(2, STAGES, "diagnosing it")
    report = diagnose(loaded, figures=True, progress=_check_ticks(tick, len(select_checks())))
    shown("report", report)

    prescribed = list(dict.fromkeys(fix for result in report["results"] for fix in result["fixes"]))
    bench_result = None
    if prescribed:
        stage(3, STAGES, f"bench: baseline vs {', '.join(prescribed)} ({seeds} seeds)")
        bench_result = bench(loaded, prescribed, steps=steps, seeds=seeds, jobs=jobs,
                             progress=_run_ticks(tick, runs=2 * seeds))
        shown("bench", bench_result)

    json_path = write_json(out_dir / f"{name}-report.json",
                           report if bench_result is None else {"report": report, "bench": bench_result})
    html_path = None
    if render_page is not None:
        html_path = atomic_write_text(out_dir / f"{name}-report.html", render_page(report, bench_result))
    return {"report": report, "bench": bench_result, "checkpoint": checkpoint, "json": json_path, "html": html_path}


def _check_ticks(tick: DemoProgress, total: int):
    """The runner's (event, slug, result) events as checks done out of `total`."""
    done = 0

    def on_event(event: str, slug: str, result) -> None:
        nonlocal done
        done += event == "end"
        tick(done, total, f"running {slug}" if event == "start" else f"ran {slug}")

    return on_event


def _run_ticks(tick: DemoProgress, runs: int):
    """The bench's (arm, seed, step, total) events as training steps done over all `runs`."""
    finished = 0

    def on_progress(arm: str, seed: int, step: int, total: int) -> None:
        nonlocal finished
        tick(finished * total + step, runs * total, f"training {arm} seed {seed}")
        finished += step == total

    return on_progress
