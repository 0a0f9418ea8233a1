"""The Check contract: measure evidence on a copy of the subject, then judge it against options.

A check is a class in its own file under `modeldoctor/checks/`, registered with `@register_check`.
Its docstring is its spec, with the headings What it checks / Why it matters / Evidence / Fixes /
Options; `modeldoctor explain`, the HTML report and the case book all render that one text.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import BudgetExceeded
from .results import Evidence
from .subject import Subject

DOC_HEADINGS = ("What it checks", "Why it matters", "Evidence", "Fixes", "Options")


@dataclass
class CheckContext:
    """What the runner hands a check besides the subject: its seed and time budget."""

    seed: int = 0
    deadline: float | None = None  # time.monotonic() value

    def time_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def ensure_time(self, what: str = "") -> None:
        if self.time_left() <= 0:
            raise BudgetExceeded(f"time budget exhausted{' during ' + what if what else ''}")


class Check:
    """Base class. Subclasses set the class attributes and implement `measure` and `judge`."""

    slug: ClassVar[str] = ""
    code: ClassVar[str] = ""
    severity: ClassVar[str] = "error"  # error | warning | info: how bad a failure is
    title: ClassVar[str] = ""
    fixes: ClassVar[tuple[str, ...]] = ()
    default_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any):
        unknown = set(options) - set(self.default_options)
        if unknown:
            raise ValueError(f"{self.slug}: unknown option(s) {', '.join(sorted(unknown))}")
        self.options = {**self.default_options, **options}

    def requires(self, subject: Subject) -> str | None:
        """Why this check cannot run on `subject` (it is then skipped), or None."""
        return None

    def measure(self, subject: Subject, ctx: CheckContext) -> Evidence:
        raise NotImplementedError

    def judge(self, evidence: Evidence) -> tuple[str, str]:
        """(status, one-line summary) from the evidence and `self.options`."""
        raise NotImplementedError

    def prescribed_fixes(self, status: str, evidence: Evidence) -> list[str]:
        """Fixes to list with the finding; by default all of `fixes` when the check does not pass."""
        return list(self.fixes) if status in ("fail", "warn") else []

    def advice(self, status: str, evidence: Evidence) -> list[str]:
        """Extra lines for the finding (what a failure implies, what to look at); none by default."""
        return []

    @classmethod
    def doc(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def summary_line(cls) -> str:
        return cls.doc().splitlines()[0] if cls.__doc__ else cls.slug
