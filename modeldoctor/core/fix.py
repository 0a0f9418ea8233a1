"""The Fix contract and the engine that applies fixes to copies of a subject.

A fix is a class in its own file under `modeldoctor/fixes/`, registered with `@register_fix`. Its
docstring is its documentation (What it changes / Why / Seed / Retraining). Kinds:
- surgery: changes modules (clamp outputs, learnable Fourier frequencies, pre-LN);
- recipe: changes the training recipe (warmup + cosine, clipping);
- data: changes the data or objective (random query sampling, masked-only loss).

A fix acts on a Subject before its weights are loaded, and must not rename parameters, so a
checkpoint can record the fixes it went through and `load` replays them before loading weights.
"""
from __future__ import annotations

import inspect
from typing import ClassVar, Iterable

from .errors import InputError
from .registry import get_fix
from .subject import Subject

DOC_HEADINGS = ("What it changes", "Why", "Seed", "Retraining")


class Fix:
    slug: ClassVar[str] = ""
    kind: ClassVar[str] = "surgery"  # surgery | recipe | data
    needs_retraining: ClassVar[bool] = True
    seed: ClassVar[str] = ""  # which seed story prescribes it

    def applicable(self, subject: Subject) -> str | None:
        """Why this fix cannot apply to `subject`, or None."""
        return None

    def apply(self, subject: Subject) -> None:
        """Change `subject` (already a copy) in place."""
        raise NotImplementedError

    @classmethod
    def doc(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def summary_line(cls) -> str:
        return cls.doc().splitlines()[0] if cls.__doc__ else cls.slug


def parse_fix_list(text: str | Iterable[str]) -> list[str]:
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in names if n.strip()]
    for name in names:
        get_fix(name)  # raises InputError for unknown names
    return names


def apply_fixes(subject: Subject, names: Iterable[str], *, copy: bool = True) -> Subject:
    """A copy of `subject` with the named fixes applied in order (recorded in `fixes_applied`)."""
    patched = subject.copy() if copy else subject
    for name in names:
        if name in patched.fixes_applied:
            continue  # fixes are idempotent: applying one twice changes nothing
        fix = get_fix(name)()
        reason = fix.applicable(patched)
        if reason:
            raise InputError(f"fix {name!r} does not apply to subject {patched.name!r}: {reason}")
        fix.apply(patched)
        patched.fixes_applied.append(name)
    return patched
