"""The `modeldoctor` command line: thin Typer commands that parse, delegate and render.

Exit codes: 0 nothing at or above --fail-on; 1 findings at or above it; 2 bad input or usage (one
line on stderr; the traceback only with --debug); 3 an internal error in modeldoctor itself.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

try:  # Typer >= 0.20 vendors click; older releases use click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

from .core.errors import InputError

app = typer.Typer(
    name="modeldoctor",
    help="Diagnose PyTorch models that run without errors but predict badly.\n\n"
    "Typical session: `modeldoctor diagnose ckpt.pt`, then `modeldoctor fix ckpt.pt --apply A,B --out patched.pt`, "
    "then `modeldoctor bench ckpt.pt --fix A,B` to measure what the fixes buy. `modeldoctor demo` runs all of it "
    "on a sample patient.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
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


def load(path: Path, subject: str | None, config: Path | None, plugins: list[str] | None, trust: bool):
    from .engine.checkpoint import load_checkpoint, read_config_file
    from .core.registry import load_plugin, load_plugins

    load_plugins()
    for plugin in plugins or []:
        load_plugin(plugin)
    overrides = read_config_file(config) if config else None
    if trust:
        err.print(f"[bold yellow]warning:[/] --trust-checkpoint: any code pickled in {path} will run.", highlight=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # our own warning is printed above
        return load_checkpoint(path, subject=subject, config=overrides, trust=trust)


def guard_output(output: Path | None, *inputs: Path) -> None:
    """modeldoctor never writes over the user's input file."""
    if output is None or str(output) == "-":
        return
    for source in inputs:
        if source.exists() and output.resolve() == source.resolve():
            raise InputError(f"refusing to write {output}: it is the input file (pick another --out/--json/--html)")


def write_outputs(json_path: Path | None, html_path: Path | None, report: dict | None, bench: dict | None) -> None:
    from .engine.files import atomic_write_text, write_json
    from .report import render_html
    from .report.docs import docs_for

    if json_path is not None:
        data = report if bench is None else bench if report is None else {"report": report, "bench": bench}
        if str(json_path) == "-":
            sys.stdout.write(json.dumps(data, indent=2) + "\n")
        else:
            write_json(json_path, data)
            err.print(f"JSON written to [bold]{escape(str(json_path))}[/]", highlight=False)
    if html_path is not None:
        atomic_write_text(html_path, render_html(report=report, bench=bench, docs=docs_for(report, bench)))
        err.print(f"HTML report written to [bold]{escape(str(html_path))}[/]", highlight=False)


def bar_progress(spinner: bool = False) -> Progress:
    """A transient progress bar on stderr (stdout stays clean for tables and `--json -`)."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    return Progress(*([SpinnerColumn()] if spinner else []), *columns, console=err, transient=True)


def run_diagnosis(loaded, checks: list[str] | None, seed: int, budget: float) -> dict:
    from .engine.runner import build_report, run_battery, select_checks, subject_info

    selected = select_checks(checks)
    with bar_progress(spinner=True) as progress:
        task = progress.add_task("diagnosing", total=len(selected))

        def on_event(event: str, slug: str, result) -> None:
            if event == "start":
                progress.update(task, description=f"running [bold]{escape(str(slug))}[/]")
            else:
                progress.advance(task)

        results = run_battery(loaded.subject, selected, seed=seed, budget_s=budget, progress=on_event)
    return build_report(subject_info(loaded.subject, loaded.path, loaded.sha256), results)


def split_names(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


@app.command()
def diagnose(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint: modeldoctor format, a state dict (or wrapper), or .safetensors.")],
    subject: SubjectOpt = None,
    config: ConfigOpt = None,
    plugin: Plugins = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the modeldoctor.report/1 JSON here ('-' for stdout).")] = None,
    html_path: Annotated[Optional[Path], typer.Option("--html", help="Write the self-contained HTML report here.")] = None,
    fail_on: Annotated[str, typer.Option("--fail-on", help="Exit 1 when any check reaches this level: fail, warn or never.")] = "fail",
    checks: Annotated[Optional[str], typer.Option("--checks", help="Comma-separated checks to run (default: all).")] = None,
    budget: Annotated[float, typer.Option("--budget", min=1, help="Time budget per check, in seconds.")] = 120.0,
    seed: Seed = 0,
    trust_checkpoint: Trust = False,
    threads: Threads = 1,
    debug: Debug = False,
) -> None:
    """Run the battery of checks on a checkpoint and report the findings, their evidence and fixes."""
    from .report import print_report

    with handled(debug, threads):
        if fail_on not in ("fail", "warn", "never"):
            raise InputError(f"--fail-on must be fail, warn or never (got {fail_on!r})")
        guard_output(json_path, checkpoint)
        guard_output(html_path, checkpoint)
        loaded = load(checkpoint, subject, config, plugin, trust_checkpoint)
        report = run_diagnosis(loaded, split_names(checks), seed, budget)
        if str(json_path) != "-":
            print_report(report, out)
        write_outputs(json_path, html_path, report, None)
        from .core.results import reaches

        if reaches(report["results"], fail_on):
            raise typer.Exit(1)


@app.command()
def fix(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to patch (it is never modified).")],
    apply: Annotated[str, typer.Option("--apply", help="Comma-separated fixes to apply, in order (see `modeldoctor list`).")],
    output: Annotated[Path, typer.Option("--out", help="Where to write the patched checkpoint.")],
    subject: SubjectOpt = None,
    config: ConfigOpt = None,
    plugin: Plugins = None,
    trust_checkpoint: Trust = False,
    debug: Debug = False,
) -> None:
    """Apply fixes to a copy of the checkpoint and write it to --out, with the fixes recorded in it."""
    from .engine.checkpoint import save_checkpoint
    from .core.fix import apply_fixes, parse_fix_list
    from .core.registry import get_fix

    with handled(debug):
        guard_output(output, checkpoint)
        loaded = load(checkpoint, subject, config, plugin, trust_checkpoint)
        names = parse_fix_list(apply)
        if not names:
            raise InputError("--apply needs at least one fix name")
        patched = apply_fixes(loaded.subject, names)
        save_checkpoint(output, patched, extra={"patched_from": loaded.sha256})
        retrain = [n for n in names if get_fix(n).needs_retraining]
        out.print(f"Wrote [bold]{escape(str(output))}[/] with fixes: {escape(', '.join(patched.fixes_applied))}", highlight=False)
        if retrain:
            out.print(f"Needs retraining to take effect: {', '.join(retrain)}. "
                      f"Measure it with `modeldoctor bench {escape(str(checkpoint))} --fix {','.join(names)}`.", highlight=False)


@app.command()
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
    from .core.fix import parse_fix_list
    from .report import print_bench

    with handled(debug, threads):
        for path in (json_path, html_path):
            guard_output(path, checkpoint)
        loaded = load(checkpoint, subject, config, plugin, trust_checkpoint)
        arm_fixes = [parse_fix_list(text) for text in fix]
        if not any(arm_fixes):
            raise InputError("--fix needs at least one fix name")
        result = run_bench_with_progress(loaded, arm_fixes, steps, list(range(seeds)), jobs, plugin)
        if str(json_path) != "-":
            print_bench(result, out)
        write_outputs(json_path, html_path, None, result)


def run_bench_with_progress(loaded, arm_fixes: list[list[str]], steps: int | None, seeds: list[int],
                            jobs: int = 0, plugins: list[str] | None = None) -> dict:
    from .engine.bench import Arm, run_bench
    from .engine.runner import subject_info

    arms = [Arm("baseline", [])] + [Arm("patched" if len(arm_fixes) == 1 else f"patched-{i + 1}", fixes)
                                    for i, fixes in enumerate(arm_fixes)]
    subject = loaded.subject
    total_steps = steps or subject.recipe.steps
    with bar_progress() as progress:
        task = progress.add_task("bench", total=len(arms) * len(seeds) * total_steps)
        finished_runs = 0

        def on_progress(arm: str, seed: int, step: int, total: int) -> None:
            nonlocal finished_runs
            progress.update(task, completed=finished_runs * total + step, description=f"training [bold]{escape(str(arm))}[/] seed {seed}")
            finished_runs += step == total

        return run_bench(subject.name, subject.config, arms, base_fixes=subject.fixes_applied, seeds=seeds, steps=steps,
                         progress=on_progress, subject_data=subject_info(subject, loaded.path, loaded.sha256),
                         jobs=jobs or min(os.cpu_count() or 1, len(arms) * len(seeds)),
                         plugins=[str(Path(p).resolve()) if Path(p).exists() else p for p in plugins or []])


@app.command()
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
    with handled(debug, threads):
        train_sample_with_progress(name, output, healthy=healthy, steps=steps, seed=seed)
        out.print(f"Wrote [bold]{escape(str(output))}[/] ({'healthy' if healthy else 'failing'} {name})", highlight=False)


def train_sample_with_progress(name: str, output: Path, *, healthy: bool, steps: int | None, seed: int):
    from .core.registry import build_subject, load_plugins
    from .engine.sampling import save_sample
    from .samples import SAMPLES

    load_plugins()
    if name not in SAMPLES:
        raise InputError(f"unknown sample {name!r} (known: {', '.join(sorted(SAMPLES))})")
    sample_spec = SAMPLES[name]
    total = steps or build_subject(name, sample_spec.healthy if healthy else sample_spec.failing).recipe.steps
    with bar_progress() as progress:
        task = progress.add_task(f"training {'healthy' if healthy else 'failing'} {name}", total=total)
        return save_sample(name, output, healthy=healthy, steps=steps, seed=seed,
                           on_step=lambda step, loss: progress.update(task, completed=step + 1))


@app.command()
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
    from .engine.checkpoint import load_checkpoint
    from .report import print_bench, print_report

    with handled(debug, threads):
        started = time.monotonic()
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = out_dir / f"{name}-failing.pt"
        out.rule(f"[bold]1/3[/] training the failing [bold]{escape(str(name))}[/] sample")
        train_sample_with_progress(name, checkpoint, healthy=False, steps=steps, seed=0)
        loaded = load_checkpoint(checkpoint)
        out.rule("[bold]2/3[/] diagnosing it")
        report = run_diagnosis(loaded, None, 0, 120.0)
        print_report(report, out)
        prescribed = list(dict.fromkeys(f for r in report["results"] for f in r["fixes"]))
        bench_result = None
        if prescribed:
            out.rule(f"[bold]3/3[/] bench: baseline vs {', '.join(prescribed)} ({seeds} seeds)")
            bench_result = run_bench_with_progress(loaded, [prescribed], steps, list(range(seeds)), jobs)
            print_bench(bench_result, out)
        write_outputs(out_dir / f"{name}-report.json", out_dir / f"{name}-report.html", report, bench_result)
        out.print(f"Done in {time.monotonic() - started:.0f}s. Open [bold]{escape(str(out_dir / f'{name}-report.html'))}[/] in a browser.", highlight=False)


@app.command("list")
def list_command(plugin: Plugins = None, debug: Debug = False) -> None:
    """List the registered subjects, sample patients, checks and fixes."""
    from .core.registry import CHECKS, FIXES, SUBJECTS, load_plugin, load_plugins
    from .samples import SAMPLES

    with handled(debug):
        load_plugins()
        for spec in plugin or []:
            load_plugin(spec)
        for title, rows, columns in (
            ("Checks", [(slug, c.code, c.severity, c.summary_line()) for slug, c in CHECKS.items()], ("check", "code", "severity", "what it checks")),
            ("Fixes", [(slug, f.kind, "yes" if f.needs_retraining else "no", f.summary_line()) for slug, f in FIXES.items()], ("fix", "kind", "retrain", "what it does")),
            ("Subjects", [(name, "sample" if name in SAMPLES else "", SAMPLES[name].summary if name in SAMPLES else (getattr(f, "__doc__", "") or "").strip().split("\n")[0])
                          for name, f in SUBJECTS.items()], ("subject", "kind", "about")),
        ):
            table = Table(title=title, title_justify="left", title_style="bold")
            for column in columns:
                table.add_column(column, overflow="fold")
            for row in rows:
                table.add_row(*row)
            out.print(table)


@app.command()
def explain(name: Annotated[str, typer.Argument(help="A check or fix slug.")], plugin: Plugins = None, debug: Debug = False) -> None:
    """Show the documentation of a check or a fix."""
    from .core.registry import CHECKS, FIXES, load_plugin, load_plugins

    with handled(debug):
        load_plugins()
        for spec in plugin or []:
            load_plugin(spec)
        item = CHECKS.get(name) or FIXES.get(name)
        if item is None:
            raise InputError(f"no check or fix named {name!r} (known: {', '.join(sorted([*CHECKS, *FIXES]))})")
        kind = "check" if name in CHECKS else "fix"
        out.rule(f"[bold]{escape(str(name))}[/] ({kind})")
        out.print(item.doc(), markup=False, highlight=False)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one-line usage errors with exit code 2."""
    try:
        code = app(args=argv, prog_name="modeldoctor", standalone_mode=False)
    except ClickException as error:
        err.print(f"modeldoctor: error: {error.format_message()} (see --help)", markup=False, highlight=False, soft_wrap=True)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except Exception as error:  # reaches here only with --debug: show the traceback, keep the documented exit code
        import traceback

        traceback.print_exc()
        code = 2 if isinstance(error, InputError) else 3
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
