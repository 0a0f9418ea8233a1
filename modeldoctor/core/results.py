"""Results as plain data: what checks return, what reports render, what the JSON holds.

Schema `modeldoctor.report/1` (one object per diagnose run):

    {"schema": "modeldoctor.report/1", "tool_version": "...", "created": "ISO-8601",
     "subject": {"name", "checkpoint", "sha256", "config", "description", "fixes_applied"},
     "status": worst status, "counts": {"pass": n, ...},
     "results": [{"check", "code", "status", "severity", "summary", "metrics", "fixes",
                  "duration_s", "options", "figures", "error"}]}

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
from typing import Any

STATUSES = ("pass", "warn", "fail", "skip", "error")
# Order used for --fail-on: a run "reaches" a level when any result is at or above it.
STATUS_RANK = {"skip": 0, "pass": 0, "warn": 1, "fail": 2, "error": 2}


@dataclass
class Figure:
    kind: str
    title: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "title": self.title, **clean(self.data)}


@dataclass
class Evidence:
    """What a check measured: numbers and figures, before any judgement."""

    metrics: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class CheckResult:
    check: str
    code: str
    status: str
    severity: str
    summary: str
    metrics: dict[str, Any] = field(default_factory=dict)
    fixes: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    figures: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["metrics"] = clean(self.metrics)
        data["duration_s"] = round(self.duration_s, 3)
        return data


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


def worst_status(statuses: list[str]) -> str:
    if not statuses:
        return "skip"
    order = {"skip": 0, "pass": 1, "warn": 2, "fail": 3, "error": 4}
    return max(statuses, key=order.__getitem__)


def counts(results: list[dict]) -> dict[str, int]:
    return {status: sum(1 for r in results if r["status"] == status) for status in STATUSES}


def reaches(results: list[dict], fail_on: str) -> bool:
    """True when any result is at or above `fail_on` (fail | warn | never)."""
    if fail_on == "never":
        return False
    threshold = {"warn": 1, "fail": 2}[fail_on]
    return any(STATUS_RANK[r["status"]] >= threshold for r in results)
