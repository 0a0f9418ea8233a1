"""Render report and bench JSON (plain dicts) as one self-contained HTML page.

The page has no external references: CSS is inline, figures are inline SVG drawn by
`figures.figure_svg`. Every string from the data goes through Jinja2's autoescaping; only
SVG markup produced by matplotlib (or our own escaped placeholder) and `table` figures built here
with every cell escaped are marked safe.
"""
from __future__ import annotations

import functools
import inspect
import json
import math
import re
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from ..core.check import DOC_HEADINGS as CHECK_HEADINGS
from ..core.fix import DOC_HEADINGS as FIX_HEADINGS
from ..core.results import STATUSES, worst_status
from ..core.results import counts as count_statuses
from .figures import figure_svg, format_number, side_metrics_text

__all__ = ["render_html", "doc_blocks", "format_metric"]

KNOWN_STATUSES = frozenset(STATUSES)  # the order lives in core.results; here only membership matters
# The fixed headings of check and fix docstrings, plus a few general ones.
DOC_HEADINGS = frozenset({*CHECK_HEADINGS, *FIX_HEADINGS, "Notes", "Example", "Examples", "References"})
SHA_SHORT = 12
NUM_CLASS = ' class="num"'


@functools.lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("modeldoctor", "report/templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = format_number
    env.filters["status_class"] = status_class
    return env


def status_class(status: Any) -> str:
    """A CSS-safe class for a status; unknown statuses look like `skip`."""
    return str(status) if status in KNOWN_STATUSES else "unknown"


def render_html(report: dict | None = None, bench: dict | None = None,
                docs: dict[str, str] | None = None, title: str = "modeldoctor report") -> str:
    """One self-contained HTML page for a diagnose report and/or a bench run.

    `docs` maps check and fix slugs to their docstrings (shown with each check and fix).
    """
    docs = docs or {}
    page = {
        "title": title,
        "header": _header(report, bench),
        "checks": [_check_view(r, docs) for r in (report or {}).get("results") or []],
        "has_report": report is not None,
        "layers": _layers_view((report or {}).get("weights")),
        # Only a report that says so (schema 2, run without a renderer) lacks figures on purpose.
        "figures_skipped": (report or {}).get("figures") is False,
        "bench": _bench_view(bench) if bench is not None else None,
    }
    return _environment().get_template("report.html.j2").render(**page)


# ----------------------------------------------------------------------------- header

def _header(report: dict | None, bench: dict | None) -> dict:
    """Subject, provenance and overall status for the top of the page."""
    report = report or {}
    subject = report.get("subject") or (bench or {}).get("subject") or {}
    results = report.get("results") or []
    statuses = [r.get("status") for r in results if r.get("status") in KNOWN_STATUSES]
    sha = str(subject.get("sha256") or "")
    config = subject.get("config")
    return {
        "name": subject.get("name") or "unnamed subject",
        "checkpoint": subject.get("checkpoint"),
        "sha256": sha,
        "sha_short": sha[:SHA_SHORT] + ("…" if len(sha) > SHA_SHORT else ""),
        "description": subject.get("description"),
        "fixes_applied": list(subject.get("fixes_applied") or []),
        "evidence": [str(kind) for kind in report.get("evidence") or []],
        "config": _pretty_json(config) if config not in (None, {}, "") else None,
        "status": report.get("status") or (worst_status(statuses) if report else None),
        "counts": report.get("counts") or count_statuses([{"status": s} for s in statuses]),
        "created": report.get("created") or (bench or {}).get("created"),
        "tool_version": report.get("tool_version") or (bench or {}).get("tool_version"),
    }


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


# ----------------------------------------------------------------------------- layers

LAYERS_SHOWN = 40  # rows before the rest fold away; flagged layers come first


def _layers_view(weights: Any) -> dict | None:
    """The layers x checks heatmap of a weights report: one row per layer, worst first, a cell per weight check."""
    if not isinstance(weights, dict) or not weights.get("layers"):
        return None
    checks = [str(c) for c in weights.get("checks") or []]
    rows = []
    for layer in weights["layers"]:
        flags = layer.get("flags") or {}
        rows.append({
            "name": str(layer.get("name")), "kind": str(layer.get("kind") or ""),
            "shape": "×".join(str(n) for n in layer.get("shape") or []) or "scalar",
            "dtype": str(layer.get("dtype") or ""), "parameters": format_number(layer.get("parameters")),
            "cells": [{"check": c, "status": str(flags.get(c, "pass"))} for c in checks],
            "flagged": bool(flags),
        })
    facts = [("format", weights.get("format")), ("tensors", weights.get("tensors")),
             ("parameters", format_number(weights.get("parameters"))),
             ("dtypes", ", ".join(f"{k} ×{v}" for k, v in (weights.get("dtypes") or {}).items())),
             ("optimizer state", "yes" if weights.get("optimizer") else "no"),
             ("compared against", weights.get("against"))]
    facts += [(str(k), format_number(v) if isinstance(v, (int, float)) else str(v)) for k, v in (weights.get("extra") or {}).items()]
    columns = [{"slug": c, "anchor": "check-" + _anchor(c)} for c in checks]
    return {"checks": columns, "shown": rows[:LAYERS_SHOWN], "folded": rows[LAYERS_SHOWN:],
            "flagged": sum(row["flagged"] for row in rows), "total": len(rows),
            "facts": [(k, v) for k, v in facts if v not in (None, "")],
            "notes": [str(note) for note in weights.get("notes") or []]}


# ----------------------------------------------------------------------------- checks

def _check_view(result: dict, docs: dict[str, str]) -> dict:
    """Everything the template needs for one check card, already formatted."""
    slug = str(result.get("check") or "unnamed-check")
    return {
        "slug": slug,
        "anchor": "check-" + _anchor(slug),
        "code": result.get("code"),
        "status": result.get("status") or "unknown",
        "evidence": result.get("evidence"),
        "summary": result.get("summary") or "",
        "findings": _findings_view(result.get("findings")),
        "duration": _duration(result.get("duration_s")),
        "metrics": [(str(k), format_metric(v)) for k, v in (result.get("metrics") or {}).items()],
        "figures": [_figure_html(f) for f in result.get("figures") or []],
        "notes": [str(n) for n in result.get("notes") or []],
        "error": result.get("error") if result.get("status") == "error" else None,
        "options": _pretty_json(result["options"]) if result.get("options") else None,
        "doc": doc_blocks(docs.get(slug)),
        "fixes": [_fix_view(str(f), docs) for f in result.get("fixes") or []],
    }


def _findings_view(findings: Any) -> list[dict]:
    """The findings worth listing under the summary: several, or one that rests on metrics or prescribes fixes.

    A lone bare finding is the summary itself; the advice of every finding is among the notes.
    """
    rows = [f for f in findings or [] if isinstance(f, dict)]
    if len(rows) == 1 and not (rows[0].get("metrics") or rows[0].get("fixes")):
        return []
    return [{"status": f.get("status") or "unknown", "kind": str(f.get("kind") or ""), "message": str(f.get("message") or ""),
             "metrics": [str(m) for m in f.get("metrics") or []], "fixes": [str(x) for x in f.get("fixes") or []]}
            for f in rows]


def _fix_view(slug: str, docs: dict[str, str]) -> dict:
    blocks = doc_blocks(docs.get(slug))
    lead = blocks[0] if blocks and blocks[0]["type"] == "para" else None
    return {"slug": slug, "lead": lead, "doc": blocks[1:] if lead else blocks}


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-") or "x"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "—"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _safe_svg(figure: dict) -> Markup:
    """SVG from matplotlib (or our own escaped placeholder): the one thing marked safe."""
    return Markup(figure_svg(figure))


def _figure_html(figure: Any) -> Markup:
    """A `table` figure as an HTML table (every cell escaped); any other kind as SVG."""
    if not (isinstance(figure, dict) and figure.get("kind") == "table"):
        return _safe_svg(figure)

    def cell(value: Any) -> str:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return f"<td{NUM_CLASS if number else ''}>{escape(format_number(value))}</td>"

    title = figure.get("title")
    caption = f"<caption>{escape(str(title))}</caption>" if title else ""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in figure.get("columns") or [])
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>"
                   for row in figure.get("rows") or [] if isinstance(row, (list, tuple)))
    return Markup(f'<div class="table-wrap"><table>{caption}'
                  f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def format_metric(value: Any) -> str:
    """A metric value for a table cell: numbers to 4 significant digits, lists and dicts compact."""
    if isinstance(value, (list, tuple)):
        shown = ", ".join(format_metric(v) for v in list(value)[:8])
        return f"[{shown}{', …' if len(value) > 8 else ''}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_metric(v)}" for k, v in value.items()) + "}"
    return format_number(value)


# ----------------------------------------------------------------------------- docs

def doc_blocks(text: str | None) -> list[dict]:
    """Split a docstring into blocks: heading, para, list, pre (all plain text, escaped later).

    A line that equals a known heading (optionally with a trailing colon) becomes a heading;
    indented lines are preformatted; `- ` / `* ` lines are list items; the rest are paragraphs.
    Paragraph and list text is a list of `(text, is_code)` segments for `backtick` spans.
    """
    if not text:
        return []
    blocks: list[dict] = []
    current: dict | None = None
    lines = inspect.cleandoc(str(text)).splitlines()
    for line in lines:
        stripped = line.strip()
        if current is None and blocks and blocks[-1]["type"] == "heading" \
                and re.fullmatch(r"[-=~]{3,}", stripped):
            continue  # underline of a heading
        if stripped.rstrip(":") in DOC_HEADINGS:
            current = None
            blocks.append({"type": "heading", "text": stripped.rstrip(":")})
        elif not stripped:
            if current and current["type"] == "pre":
                current["lines"].append("")
            else:
                current = None
        elif current and current["type"] == "list" and line[:1].isspace():
            current["raw"][-1] += " " + stripped
        elif line.startswith(("    ", "\t")):
            if not current or current["type"] != "pre":
                current = {"type": "pre", "lines": []}
                blocks.append(current)
            current["lines"].append(line[4:] if line.startswith("    ") else line[1:])
        elif stripped.startswith(("- ", "* ")):
            if not current or current["type"] != "list":
                current = {"type": "list", "raw": []}
                blocks.append(current)
            current["raw"].append(stripped[2:])
        else:
            if not current or current["type"] != "para":
                current = {"type": "para", "raw": []}
                blocks.append(current)
            current["raw"].append(stripped)
    return [_finish_block(b) for b in blocks]


def _finish_block(block: dict) -> dict:
    if block["type"] == "pre":
        return {"type": "pre", "text": "\n".join(block["lines"]).rstrip()}
    if block["type"] == "para":
        return {"type": "para", "segments": _segments(" ".join(block["raw"]))}
    if block["type"] == "list":
        return {"type": "list", "items": [_segments(item) for item in block["raw"]]}
    return block


def _segments(text: str) -> list[tuple[str, bool]]:
    parts = re.split(r"`([^`]+)`", text)
    return [(part, i % 2 == 1) for i, part in enumerate(parts) if part]


# ----------------------------------------------------------------------------- bench

def _bench_view(bench: dict) -> dict:
    """Arms, comparisons and curves of a bench run, formatted for the template."""
    higher = bench.get("higher_is_better")
    budget = bench.get("budget") or {}
    arms = bench.get("arms") or []
    trivial = bench.get("trivial")
    return {
        "metric": bench.get("metric") or "metric",
        "higher_is_better": higher,
        "steps": budget.get("steps"),
        "seeds": list(budget.get("seeds") or []),
        "budget_extra": {k: v for k, v in budget.items() if k not in ("steps", "seeds")},
        "arms": [_arm_view(a) for a in arms],
        "has_side": any(a.get("side_metrics") for a in arms),
        "trivial": ({"name": trivial.get("name") or "trivial baseline",
                     "value": format_number(trivial.get("value"))}
                    if isinstance(trivial, dict) else None),
        "comparisons": [_comparison_view(c, higher) for c in bench.get("comparisons") or []],
        "arms_svg": _safe_svg(_arms_figure(bench)) if arms else None,
        "curves_svg": _safe_svg(curves_figure(bench["curves"])) if bench.get("curves") else None,
    }


def _arm_view(arm: dict) -> dict:
    return {
        "name": str(arm.get("name") or "arm"),
        "fixes": [str(f) for f in arm.get("fixes") or []],
        "values": [format_number(v) for v in arm.get("values") or []],
        "mean_std": _mean_std(arm.get("mean"), arm.get("std")),
        "side": side_metrics_text(arm),
    }


def _mean_std(mean: Any, std: Any) -> str:
    if std is None:
        return format_number(mean)
    return f"{format_number(mean)} ± {format_number(std)}"


def _signed(value: Any) -> str:
    text = format_number(value)
    return "+" + text if isinstance(value, (int, float)) and value > 0 else text


def _comparison_view(comparison: dict, higher_is_better: bool | None) -> dict:
    """Delta with its 95% interval and a verdict: does the interval exclude 0, and which way?"""
    delta = comparison.get("delta")
    ci = comparison.get("ci95") or [None, None]
    low, high = (ci + [None, None])[:2]
    have_ci = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high))
    excludes = have_ci and (low > 0 or high < 0)
    if not have_ci:
        verdict, tone = "no interval", "neutral"
    elif not excludes:
        verdict, tone = "interval includes 0: inconclusive", "neutral"
    elif higher_is_better is None:
        verdict, tone = "interval excludes 0", "good"
    else:
        better = (low > 0) == bool(higher_is_better)
        verdict = f"{'better' if better else 'worse'}: interval excludes 0"
        tone = "good" if better else "bad"
    return {
        "arm": str(comparison.get("arm") or "arm"),
        "baseline": str(comparison.get("baseline") or "baseline"),
        "delta": _signed(delta),
        "ci": f"[{_signed(low)}, {_signed(high)}]" if have_ci else "—",
        "excludes_zero": excludes,
        "verdict": verdict,
        "tone": tone,
        "values": [_signed(v) for v in comparison.get("values") or []],
    }


def _arms_figure(bench: dict) -> dict:
    """Bar chart of each arm's mean, with the trivial baseline as a reference line."""
    trivial = bench.get("trivial")
    hlines = ([{"y": trivial.get("value"), "label": trivial.get("name") or "trivial baseline"}]
              if isinstance(trivial, dict) and trivial.get("value") is not None else [])
    arms = bench.get("arms") or []
    return {"kind": "bar", "title": f"{bench.get('metric') or 'metric'} by arm (mean over seeds)",
            "labels": [str(a.get("name")) for a in arms], "values": [a.get("mean") for a in arms],
            "ylabel": bench.get("metric") or "", "hlines": hlines}


def curves_figure(curves: dict) -> dict:
    """A `line` figure with one series per arm: the loss averaged over seeds at each step.

    Each arm is `{"steps": [...], "loss": [[...] per seed]}` (seeds × steps, as bench writes it);
    None values are ignored in the mean.
    """
    series = []
    for name, curve in curves.items():
        steps, per_seed = list(curve.get("steps") or []), curve.get("loss") or []
        series.append({"name": str(name), "x": steps, "y": [_nanmean(list(values)) for values in zip(*per_seed)]})
    finite = [v for s in series for v in s["y"] if v is not None]
    return {"kind": "line", "title": "Training loss (mean over seeds)", "series": series,
            "xlabel": "step", "ylabel": "loss", "logy": bool(finite) and min(finite) > 0}


def _nanmean(values: list) -> float | None:
    finite = [float(v) for v in values
              if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None
