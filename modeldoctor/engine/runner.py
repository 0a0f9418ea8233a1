"""Runs a battery of checks on a subject and assembles the `modeldoctor.report/1` data.

Each check gets its own copy of the subject (the model the next check sees is the one the user
gave), a fixed seed, and a time budget. A check that raises is recorded as `error`; the rest still run.
"""
from __future__ import annotations

import datetime as dt
import time
import traceback
import zlib
from typing import Any, Callable, Iterable

from ..core.version import __version__
from ..core.check import Check, CheckContext
from ..core.errors import BudgetExceeded
from ..core.registry import CHECKS, FIXES, get_check, load_plugins
from ..core.results import CheckResult, clean, counts, worst_status
from ..core.subject import Subject
from ..probes.training import seed_everything

ProgressFn = Callable[[str, str, "CheckResult | None"], None]  # (event "start"|"end", slug, result)


def select_checks(names: Iterable[str] | None = None) -> list[type[Check]]:
    """The named checks (all registered checks when `names` is empty), in registration order."""
    load_plugins()
    if not names:
        return list(CHECKS.values())
    return [get_check(name) for name in names]


def check_seed(seed: int, slug: str) -> int:
    """A per-check seed that does not depend on which other checks run."""
    return (seed * 1_000_003 + zlib.crc32(slug.encode())) % 2**31


def fix_applies(name: str, subject: Subject) -> bool:
    """Prescribe only fixes that are registered and can act on this subject."""
    load_plugins()  # the built-in fixes register on first use
    return name in FIXES and FIXES[name]().applicable(subject) is None


def run_check(
    check: Check, subject: Subject, *, seed: int = 0, budget_s: float | None = None
) -> CheckResult:
    """Run one check behind the crash barrier."""
    start = time.monotonic()
    base = dict(check=check.slug, code=check.code, severity=check.severity, options=dict(check.options))
    reason = check.requires(subject)
    if reason:
        return CheckResult(status="skip", summary=f"skipped: {reason}", **base)
    ctx = CheckContext(seed=check_seed(seed, check.slug), deadline=None if budget_s is None else start + budget_s)
    try:
        seed_everything(ctx.seed)
        evidence = check.measure(subject.copy(), ctx)
        status, summary = check.judge(evidence)
        fixes = [name for name in check.prescribed_fixes(status, evidence) if fix_applies(name, subject)]
        notes = list(evidence.notes) + check.advice(status, evidence)
    except BudgetExceeded as error:
        return CheckResult(
            status="error", summary=f"exceeded its time budget of {budget_s:g}s: {error}",
            duration_s=time.monotonic() - start, error=str(error), **base,
        )
    except Exception as error:  # the crash barrier: one broken check must not sink the battery
        return CheckResult(
            status="error", summary=f"check crashed: {type(error).__name__}: {error}",
            duration_s=time.monotonic() - start, error=traceback.format_exc(), **base,
        )
    return CheckResult(
        status=status, summary=summary, metrics=evidence.metrics, fixes=fixes,
        duration_s=time.monotonic() - start, figures=[f.to_dict() for f in evidence.figures],
        notes=notes, **base,
    )


def run_battery(
    subject: Subject,
    checks: Iterable[type[Check]] | None = None,
    *,
    options: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    budget_s: float | None = 120.0,
    progress: ProgressFn | None = None,
) -> list[CheckResult]:
    options = options or {}
    results = []
    for check_class in select_checks(None) if checks is None else checks:
        check = check_class(**options.get(check_class.slug, {}))
        if progress:
            progress("start", check.slug, None)
        result = run_check(check, subject, seed=seed, budget_s=budget_s)
        results.append(result)
        if progress:
            progress("end", check.slug, result)
    return results


def subject_info(subject: Subject, checkpoint: str | None = None, sha256: str | None = None) -> dict:
    return {
        "name": subject.name,
        "checkpoint": checkpoint,
        "sha256": sha256,
        "config": subject.config,
        "description": subject.description,
        "fixes_applied": list(subject.fixes_applied),
    }


def build_report(subject_data: dict, results: list[CheckResult]) -> dict:
    """The canonical `modeldoctor.report/1` dict."""
    rows = [r.to_dict() for r in results]
    return {
        "schema": "modeldoctor.report/1",
        "tool_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "subject": clean(subject_data),
        "status": worst_status([r["status"] for r in rows]),
        "counts": counts(rows),
        "results": rows,
    }
