"""Results as plain data: what checks measure and find, what reports render, what the JSON holds.

Schema `modeldoctor.report/2` (one object per diagnose run):

    {"schema": "modeldoctor.report/2", "tool_version": "...", "created": "ISO-8601",
     "subject": {"name", "checkpoint", "sha256", "config", "description", "fixes_applied"},
     "evidence": ["subject", "weights"],           # the kinds of evidence this run had
     "figures": true,                               # whether figures were built (only when a renderer asks)
     "status": worst status, "counts": {"pass": n, ...},
     "results": [{"check", "code", "evidence", "status", "summary", "findings", "metrics", "fixes", "notes",
                  "duration_s", "options", "figures", "error"}],
     "weights": {...}}                               # when the run had a checkpoint's weights: see below

`weights` (engine.layer_table): the checkpoint's format, tensor and parameter counts, whether it carried
optimizer/scheduler state and a base (`--against`), and one row per layer {name, kind, shape, dtype,
parameters, tensors, flags {check: status}, worst}, worst first.

Each finding: {"status", "kind", "message", "metrics", "fixes", "advice", "where"} (`where`: the tensors
or modules it is about). A result's status, summary, fixes and notes are derived from its findings by
the runner (`derive`).

Changes from `modeldoctor.report/1`: `severity` is gone (the status alone sets the exit code through
`--fail-on`); `findings`, per-result `evidence` and the top-level `evidence` and `figures` are new;
`figures` of a result is empty unless a renderer asked for them.

Figures are data, not pictures: the HTML renderer draws them. Kinds and their fields:
- line: series [{name, x, y}], xlabel, ylabel, logy, hlines [{y, label}]
- bar: labels, values, ylabel, hlines
- images: images [{label, pixels (2-D list)}], vmin, vmax, cmap
- heatmap: matrix (2-D list), xlabel, ylabel, colorbar label
- table: columns [str], rows [[cell, ...]] (drawn by the HTML renderer as an escaped <table>, not SVG)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

# The order of statuses, defined once: later is worse. `skip` and `pass` never fail a run.
STATUSES = ("skip", "pass", "warn", "fail", "error")
RANK = {status: rank for rank, status in enumerate(STATUSES)}
# `--fail-on LEVEL`: a run fails when any result is at or above LEVEL (an `error` is above `fail`).
FAIL_ON_LEVELS = ("fail", "warn", "never")
FINDING_STATUSES = ("pass", "warn", "fail")


@dataclass
class Figure:
    kind: str
    title: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "title": self.title, **clean(self.data)}


FigureBuilder = Callable[[], "list[Figure]"]


@dataclass
class Measurement:
    """What a check measured, before any judgement: numbers, notes, and figures on demand.

    `figures` is a function that builds the figures (or a ready list); the runner calls it only when a
    renderer will draw them, so `--json` runs never pay for plotting data.
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    figures: FigureBuilder | list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def build_figures(self) -> list[Figure]:
        return list(self.figures()) if callable(self.figures) else list(self.figures)


@dataclass(frozen=True)
class Finding:
    """One judgement of a check: a status, a short kind tag, one line for a person, and what it rests on.

    status: pass | warn | fail. kind: a stable tag ("exploding", "dead", "balance", "healthy").
    metrics: the metric keys the finding rests on. fixes: the fixes it prescribes (the runner keeps
    those that apply to the subject). advice: extra lines (what it implies, where to look).
    where: the tensors or modules it is about, by name (the per-layer table and heatmap of a
    weights report are built from it).
    """

    status: str
    kind: str
    message: str
    metrics: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()
    where: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.status not in FINDING_STATUSES:
            raise ValueError(f"a finding's status is one of {', '.join(FINDING_STATUSES)}, not {self.status!r}")
        for name in ("metrics", "fixes", "advice", "where"):  # accept lists; keep the frozen value hashable
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> dict:
        return {"status": self.status, "kind": self.kind, "message": self.message, "metrics": list(self.metrics),
                "fixes": list(self.fixes), "advice": list(self.advice), "where": list(self.where)}


@dataclass
class CheckResult:
    check: str
    code: str
    status: str
    summary: str
    evidence: str = "subject"
    findings: list[Finding] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    fixes: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    figures: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["findings"] = [finding.to_dict() for finding in self.findings]
        data["metrics"] = clean(self.metrics)
        data["options"] = clean(self.options)
        data["duration_s"] = round(self.duration_s, 3)
        return data


def ordered(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first; findings of one status keep the order the check gave them."""
    return sorted(findings, key=lambda finding: -RANK[finding.status])


def derive(findings: list[Finding]) -> tuple[str, str]:
    """(status, summary) of a result: the worst finding's status, and its message with "+n more".

    n counts the other findings that are not passes.
    """
    if not findings:
        return "pass", "nothing to report"
    ranked = ordered(findings)
    first = ranked[0]
    others = sum(1 for finding in ranked[1:] if finding.status != "pass")
    return first.status, first.message + (f" (+{others} more)" if others else "")


def clean(value: Any) -> Any:
    """JSON-safe copy: floats rounded to 6 significant digits, NaN/inf as None, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.6g}")
    return value


def worst_status(statuses: Iterable[str]) -> str:
    statuses = list(statuses)
    return max(statuses, key=RANK.__getitem__) if statuses else "skip"


def counts(results: list[dict]) -> dict[str, int]:
    return {status: sum(1 for r in results if r["status"] == status) for status in ("pass", "warn", "fail", "skip", "error")}


def reaches(results: list[dict], fail_on: str) -> bool:
    """True when any result is at or above `fail_on` (fail | warn | never)."""
    if fail_on == "never":
        return False
    return any(RANK[r["status"]] >= RANK[fail_on] for r in results)


def exit_code(report: dict, fail_on: str = "fail") -> int:
    """0 when nothing reaches `fail_on`, else 1 (the CLI's exit code for a finished diagnosis)."""
    return 1 if reaches(report.get("results") or [], fail_on) else 0

