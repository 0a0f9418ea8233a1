"""Terminal summaries of report and bench dicts with rich.

User strings never reach rich's markup parser unescaped: table cells are `Text` objects and
markup lines go through `rich.markup.escape`.
"""
from __future__ import annotations

import math
import shlex
from pathlib import PurePath
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..core.evidence import MISSING
from ..core.results import STATUSES
from ..core.results import counts as count_statuses
from .figures import format_number, side_metrics_text

__all__ = ["print_report", "print_bench", "prescribed_fixes", "skipped_for_evidence"]

STATUS_STYLES = {"pass": "bold green", "warn": "bold yellow", "fail": "bold red",
                 "skip": "dim", "error": "bold magenta"}


def _status(status: Any) -> Text:
    return Text(str(status), style=STATUS_STYLES.get(str(status), ""))


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "—"
    return f"{seconds:.2f} s"


def prescribed_fixes(results: list[dict]) -> list[str]:
    """Fix slugs named by warn/fail results, in order of first appearance, without repeats."""
    seen: dict[str, None] = {}
    for result in results:
        if result.get("status") in ("warn", "fail"):
            for fix in result.get("fixes") or []:
                seen.setdefault(str(fix), None)
    return list(seen)


def print_report(report: dict, console: Console) -> None:
    """A table of checks (status, summary, duration), the flagged layers, and what to do next.

    Checks skipped for want of a kind of evidence get one line per kind, not a row each.
    """
    results = report.get("results") or []
    subject = report.get("subject") or {}
    unseen = lacking_evidence(report)
    table = Table(title=Text(f"modeldoctor · {subject.get('name') or _file_name(subject.get('checkpoint'))}", style="bold"),
                  title_justify="left", expand=False)
    table.add_column("check", style="cyan", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("summary", overflow="fold")
    table.add_column("time", justify="right", no_wrap=True)
    for result in results:
        if result in unseen:
            continue
        table.add_row(Text(str(result.get("check") or "?"), style="cyan"),
                      _status(result.get("status")), Text(str(result.get("summary") or "")),
                      _duration(result.get("duration_s")))
    console.print(table)
    console.print(_counts_line(report.get("counts") or count_statuses(
        [r for r in results if r.get("status") in STATUSES])))
    for line in skipped_for_evidence(report):
        console.print(Text(line, style="dim"))
    if report.get("weights"):
        print_layers(report["weights"], console)
    fixes = prescribed_fixes(results)
    if fixes:
        source = str(subject.get("checkpoint") or "CHECKPOINT")
        checkpoint = shlex.quote(source)
        console.print(f"Prescribed fixes: [bold]{escape(', '.join(fixes))}[/bold]")
        command = f"modeldoctor fix {checkpoint} --apply {','.join(fixes)} --out {shlex.quote(patched_name(source, (report.get('weights') or {}).get('format')))}"
        console.print(f"Apply them with: [bold]{escape(command)}[/bold]", soft_wrap=True)


def _file_name(path: Any) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1] if path else "subject"


def patched_name(source: str, fmt: str | None = None) -> str:
    """Where the prescribed `fix` command writes: beside the input and in its format (a folder for a folder)."""
    if fmt == "hf-folder":
        return "patched"
    suffix = PurePath(source).suffix
    return f"patched{suffix if suffix in ('.pt', '.pth', '.bin', '.ckpt', '.safetensors') else '.pt'}"


def lacking_evidence(report: dict) -> list[dict]:
    """The results skipped because the run lacked the kind of evidence they need."""
    if "evidence" not in report:  # a report/1 (or hand-made) report does not say what the run had
        return []
    present = set(report.get("evidence") or [])
    return [r for r in report.get("results") or []
            if r.get("status") == "skip" and r.get("evidence") and r.get("evidence") not in present]


def print_layers(weights: dict, console: Console, limit: int = 12) -> None:
    """What the checkpoint holds and its flagged layers, worst first (the HTML report lists them all)."""
    layers = weights.get("layers") or []
    flagged = [row for row in layers if row.get("flags")]
    line = (f"Weights: {format_number(weights.get('parameters'))} parameters in {weights.get('tensors')} tensors, "
            f"{len(layers)} layers ({weights.get('format') or 'checkpoint'}"
            + (", with optimizer state" if weights.get("optimizer") else "") + ")")
    console.print(Text(line, style="dim"))
    for note in weights.get("notes") or []:
        console.print(Text(f"  {note}", style="dim"))
    if not flagged:
        return
    table = Table(title=Text(f"Flagged layers ({len(flagged)} of {len(layers)})", style="bold"), title_justify="left")
    for column in ("layer", "kind", "shape", "parameters", "flagged by"):
        table.add_column(column, overflow="fold")
    for row in flagged[:limit]:
        marks = Text()
        for i, (check, status) in enumerate((row.get("flags") or {}).items()):
            marks.append((", " if i else "") + f"{check} ({status})", style=STATUS_STYLES.get(str(status), ""))
        table.add_row(Text(str(row.get("name"))), Text(str(row.get("kind"))), Text("×".join(map(str, row.get("shape") or []))),
                      format_number(row.get("parameters")), marks)
    console.print(table)
    if len(flagged) > limit:
        console.print(Text(f"… and {len(flagged) - limit} more flagged layers (see --html or --json)", style="dim"))


def skipped_for_evidence(report: dict) -> list[str]:
    """One line per evidence kind the run lacked, counting the checks skipped for want of it."""
    wanting: dict[str, int] = {}
    for result in lacking_evidence(report):
        kind = result["evidence"]
        wanting[kind] = wanting.get(kind, 0) + 1
    lines = []
    for kind, n in wanting.items():
        need = MISSING.get(kind, f"needs {kind} evidence").removeprefix("needs ")  # "a recorded training run ..."
        lines.append(f"{n} checks skipped: they need {need}" if n > 1 else f"1 check skipped: it needs {need}")
    return lines


def _counts_line(counts: dict) -> Text:
    line = Text()
    parts = [(status, n) for status, n in counts.items() if n]
    for i, (status, n) in enumerate(parts):
        if i:
            line.append(" · ")
        line.append(f"{n} {status}", style=STATUS_STYLES.get(status, ""))
    return line if parts else Text("no checks ran", style="dim")


def print_bench(bench: dict, console: Console) -> None:
    """Arms (mean ± std), the trivial baseline, and comparisons with their 95% intervals."""
    metric = str(bench.get("metric") or "metric")
    higher = bench.get("higher_is_better")
    budget = bench.get("budget") or {}
    direction = "" if higher is None else (" (higher is better)" if higher else " (lower is better)")
    console.print(f"[bold]Bench[/bold] · {escape(metric)}{direction} · "
                  f"{escape(str(budget.get('steps', '?')))} steps · "
                  f"seeds {escape(', '.join(str(s) for s in budget.get('seeds') or []) or '?')}")
    arms = Table(title="arms", title_justify="left")
    arms.add_column("arm", style="cyan")
    arms.add_column("fixes")
    arms.add_column("per seed")
    arms.add_column(f"{metric} mean ± std", justify="right")
    has_side = any(arm.get("side_metrics") for arm in bench.get("arms") or [])
    if has_side:
        arms.add_column("side metrics (mean)")
    for arm in bench.get("arms") or []:
        arms.add_row(Text(str(arm.get("name"))), Text(", ".join(map(str, arm.get("fixes") or [])) or "—"),
                     Text(", ".join(format_number(v) for v in arm.get("values") or [])),
                     f"{format_number(arm.get('mean'))} ± {format_number(arm.get('std'))}",
                     *([Text(", ".join(side_metrics_text(arm)))] if has_side else []))
    console.print(arms)
    trivial = bench.get("trivial")
    if isinstance(trivial, dict):
        console.print(f"Trivial baseline ({escape(str(trivial.get('name') or 'trivial'))}): "
                      f"{format_number(trivial.get('value'))}")
    comparisons = bench.get("comparisons") or []
    if comparisons:
        console.print(_comparisons_table(comparisons, higher))


def _comparisons_table(comparisons: list[dict], higher: bool | None) -> Table:
    table = Table(title="comparisons", title_justify="left")
    for name, justify in (("arm", "left"), ("vs", "left"), ("delta", "right"),
                          ("95% interval", "right"), ("verdict", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for comparison in comparisons:
        low, high = (list(comparison.get("ci95") or []) + [None, None])[:2]
        table.add_row(Text(str(comparison.get("arm"))), Text(str(comparison.get("baseline") or "baseline")),
                      _signed(comparison.get("delta")),
                      Text(f"[{_signed(low)}, {_signed(high)}]"), _verdict(low, high, higher))
    return table


def _signed(value: Any) -> str:
    text = format_number(value)
    positive = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return "+" + text if positive else text


def _verdict(low: Any, high: Any, higher: bool | None) -> Text:
    """Whether the interval excludes 0 and, when the direction is known, which way."""
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)):
        return Text("no interval", style="dim")
    if not (low > 0 or high < 0):
        return Text("interval includes 0: inconclusive", style="yellow")
    if higher is None:
        return Text("interval excludes 0", style="bold")
    better = (low > 0) == bool(higher)
    return Text(f"{'better' if better else 'worse'}: interval excludes 0",
                style="bold green" if better else "bold red")
