"""Runs a battery of checks on the evidence at hand and assembles the `modeldoctor.report/2` data.

A check runs when the evidence it needs (`Check.needs`) is present, and is skipped with the reason
otherwise. Each subject check gets its own copy of the subject (the model the next check sees is
the one the user gave), a fixed seed, and a time budget. Everything a check does, `requires`
included, runs behind the crash barrier: a check that raises is recorded as `error` and the rest
still run. The runner derives each result's status, summary, fixes and notes from its findings.
"""
from __future__ import annotations

import datetime as dt
import time
import traceback
import zlib
from typing import Any, Callable, Iterable

from ..core.check import Check, CheckContext
from ..core.errors import BudgetExceeded
from ..core.evidence import Evidence, Trace, Weights
from ..core.registry import CHECKS, FIXES, get_check, load_plugins
from ..core.results import CheckResult, clean, counts, derive, ordered, worst_status
from ..core.subject import Subject
from ..core.version import __version__
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


def fix_applies(name: str, evidence: Evidence) -> bool:
    """Prescribe only fixes that are registered and can act on this evidence.

    A weights fix needs the checkpoint's weights; a subject fix needs a subject it applies to. With
    no subject, a subject fix is left to the finding (its `fixes` and advice say what would help).
    """
    load_plugins()  # the built-in fixes register on first use
    if name not in FIXES:
        return False
    fix = FIXES[name]()
    if fix.needs == "weights":
        return evidence.weights is not None and fix.applicable_weights(evidence.weights) is None
    return evidence.subject is not None and fix.applicable(evidence.subject) is None


def as_evidence(evidence: Evidence | Subject | Weights | Trace) -> Evidence:
    """The evidence bundle for one piece of evidence (a case-book case may return any kind)."""
    if isinstance(evidence, Evidence):
        return evidence
    if isinstance(evidence, Weights):
        return Evidence(weights=evidence)
    if isinstance(evidence, Trace):
        return Evidence(trace=evidence)
    return Evidence(subject=evidence)


def run_check(
    check: Check, evidence: Evidence | Subject, *, seed: int = 0, budget_s: float | None = None, figures: bool = True,
) -> CheckResult:
    """Run one check behind the crash barrier; `figures=False` skips building its figures."""
    evidence = as_evidence(evidence)
    start = time.monotonic()
    base = dict(check=check.slug, code=check.code, evidence=check.needs, options=dict(check.options))
    target = evidence.get(check.needs)
    if target is None:
        return CheckResult(status="skip", summary=f"skipped: {evidence.why_missing(check.needs)}", **base)
    ctx = CheckContext(seed=check_seed(seed, check.slug), deadline=None if budget_s is None else start + budget_s)
    try:
        reason = check.requires(target)
        if reason:
            return CheckResult(status="skip", summary=f"skipped: {reason}", duration_s=time.monotonic() - start, **base)
        seed_everything(ctx.seed)
        measurement = check.measure(target.copy() if isinstance(target, Subject) else target, ctx)
        findings = ordered(check.judge(measurement))
        status, summary = derive(findings)
        prescribed = dict.fromkeys(fix for finding in findings if finding.status != "pass" for fix in finding.fixes)
        fixes = [name for name in prescribed if fix_applies(name, evidence)]
        notes = list(measurement.notes) + [line for finding in findings for line in finding.advice]
        drawn = [figure.to_dict() for figure in measurement.build_figures()] if figures else []
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
        status=status, summary=summary, findings=findings, metrics=measurement.metrics, fixes=fixes,
        duration_s=time.monotonic() - start, figures=drawn, notes=notes, **base,
    )


def run_battery(
    evidence: Evidence | Subject,
    checks: Iterable[type[Check]] | None = None,
    *,
    options: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    budget_s: float | None = 120.0,
    progress: ProgressFn | None = None,
    figures: bool = True,
) -> list[CheckResult]:
    """One result per check, in order. A subject whose capabilities name missing modules is an InputError."""
    evidence = as_evidence(evidence)
    if evidence.subject is not None:
        evidence.subject.validate()
    options = options or {}
    results = []
    for check_class in select_checks(None) if checks is None else checks:
        check = check_class(**options.get(check_class.slug, {}))
        if progress:
            progress("start", check.slug, None)
        result = run_check(check, evidence, seed=seed, budget_s=budget_s, figures=figures)
        results.append(result)
        if progress:
            progress("end", check.slug, result)
    return results


def subject_info(subject: Subject | None, checkpoint: str | None = None, sha256: str | None = None) -> dict:
    """What the report says about what was examined (a subject's name and config, or just the file)."""
    if subject is None:
        return {"name": None, "checkpoint": checkpoint, "sha256": sha256, "config": {}, "description": "",
                "fixes_applied": []}
    return {
        "name": subject.name,
        "checkpoint": checkpoint,
        "sha256": sha256,
        "config": subject.config,
        "description": subject.description,
        "fixes_applied": list(subject.fixes_applied),
    }


def build_report(subject_data: dict, results: list[CheckResult], *, evidence: Iterable[str] = ("subject",),
                 figures: bool = True, weights: dict | None = None) -> dict:
    """The canonical `modeldoctor.report/2` dict; `weights` is its weights section (`engine.layer_table`)."""
    rows = [r.to_dict() for r in results]
    extra = {"weights": weights} if weights is not None else {}
    return {
        "schema": "modeldoctor.report/2",
        "tool_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "subject": clean(subject_data),
        "evidence": list(evidence),
        "figures": figures,
        "status": worst_status([r["status"] for r in rows]),
        "counts": counts(rows),
        "results": rows,
        **extra,
    }


