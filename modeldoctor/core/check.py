"""The Check contract: measure on a copy of the evidence, then judge the measurement into findings.

A check is a class in its own file under `modeldoctor/checks/`, registered with `@register_check`.
It declares the evidence it needs (`needs`: "subject", "weights" or "trace"); the runner hands it
that evidence (a copy of a subject) and skips it, with the reason, when the evidence is absent.
Its docstring is its spec, with the headings What it checks / Why it matters / Evidence / Fixes /
Options; `modeldoctor explain`, the HTML report and the case book all render that one text.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import BudgetExceeded
from .evidence import EVIDENCE_KINDS
from .results import Finding, Measurement

DOC_HEADINGS = ("What it checks", "Why it matters", "Evidence", "Fixes", "Options")


@dataclass
class CheckContext:
    """What the runner hands a check besides its evidence: its seed and time budget."""

    seed: int = 0
    deadline: float | None = None  # time.monotonic() value

    def time_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def ensure_time(self, what: str = "") -> None:
        if self.time_left() <= 0:
            raise BudgetExceeded(f"time budget exhausted{' during ' + what if what else ''}")


class Check:
    """Base class. Subclasses set the class attributes and implement `measure` and `judge`.

    `fixes` lists every fix the check can prescribe (for its documentation); each finding names
    the ones it prescribes.
    """

    slug: ClassVar[str] = ""
    code: ClassVar[str] = ""
    title: ClassVar[str] = ""
    needs: ClassVar[str] = "subject"  # one of EVIDENCE_KINDS
    fixes: ClassVar[tuple[str, ...]] = ()
    default_options: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.needs not in EVIDENCE_KINDS:
            raise TypeError(f"{cls.__name__}.needs must be one of {', '.join(EVIDENCE_KINDS)}, not {cls.needs!r}")

    def __init__(self, **options: Any):
        unknown = set(options) - set(self.default_options)
        if unknown:
            raise ValueError(f"{self.slug}: unknown option(s) {', '.join(sorted(unknown))}")
        self.options = {**self.default_options, **options}

    def requires(self, target: Any) -> str | None:
        """Why this check cannot run on `target` (its evidence; it is then skipped), or None."""
        return None

    def measure(self, target: Any, ctx: CheckContext) -> Measurement:
        raise NotImplementedError

    def judge(self, measurement: Measurement) -> list[Finding]:
        """Findings from the measurement and `self.options`; at least one (a `pass` when all is well)."""
        raise NotImplementedError

    @classmethod
    def doc(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def summary_line(cls) -> str:
        return cls.doc().splitlines()[0] if cls.__doc__ else cls.slug
