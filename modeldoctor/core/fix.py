"""The Fix contract and the engine that applies fixes to copies of a subject.

A fix is a class in its own file under `modeldoctor/fixes/`, registered with `@register_fix`. Its
docstring is its documentation (a title line, then What it changes / Why); `doc()` adds, after the
title, one line generated from the attributes `kind`, `needs_retraining` and `seed`, so the
docstring never restates them. Kinds:
- surgery: changes modules (clamp outputs, learnable Fourier frequencies, pre-LN);
- recipe: changes the training recipe (warmup + cosine, clipping);
- data: changes the data or objective (random query sampling, masked-only loss);
- weights: changes the tensors of a checkpoint (re-initialize dead units), with no model class.

A subject fix (`needs = "subject"`) acts on a Subject before its weights are loaded, and must not
rename parameters, so a checkpoint can record the fixes it went through and `load` replays them
before loading weights. A weights fix (`needs = "weights"`, kind "weights") returns the tensors it
replaces (`apply_weights`); `modeldoctor fix` writes them, with every other entry of the file kept,
to a new file.
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, ClassVar, Iterable

from .errors import InputError
from .registry import get_fix
from .subject import Subject

if TYPE_CHECKING:
    import torch

    from .evidence import Weights

DOC_HEADINGS = ("What it changes", "Why")
KINDS = ("surgery", "recipe", "data", "weights")
# The seed stories of shared/seeds by number, named after the sample patients that retell them.
SEED_STORIES = {"000": "astro-multimodal", "001": "moving-tokens", "002": "crossmodal-retrieval",
                "003": "sparse-field", "004": "dreaming-moe"}


class Fix:
    slug: ClassVar[str] = ""
    kind: ClassVar[str] = "surgery"  # surgery | recipe | data
    needs_retraining: ClassVar[bool] = True
    seed: ClassVar[str] = ""  # the seed stories that prescribe it: "003", or "000, 004"
    needs: ClassVar[str] = "subject"  # "subject": apply(); "weights": apply_weights()

    def applicable(self, subject: Subject) -> str | None:
        """Why this fix cannot apply to `subject`, or None."""
        return None

    def apply(self, subject: Subject) -> None:
        """Change `subject` (already a copy) in place."""
        raise NotImplementedError

    def applicable_weights(self, weights: "Weights") -> str | None:
        """Why this weights fix cannot apply to `weights` (nothing to change, say), or None."""
        return None

    def apply_weights(self, weights: "Weights") -> "dict[str, torch.Tensor]":
        """The tensors a weights fix replaces, by name (new tensors; `weights` is never modified)."""
        raise NotImplementedError

    @classmethod
    def seeds(cls) -> list[str]:
        return [part.strip() for part in cls.seed.split(",") if part.strip()]

    @classmethod
    def facts(cls) -> str:
        """One line from the attributes, e.g. `Kind: surgery · Retraining: needed · Seed: 003 (sparse-field)`."""
        seeds = ", ".join(f"{s} ({SEED_STORIES[s]})" if s in SEED_STORIES else s for s in cls.seeds())
        retraining = "needed" if cls.needs_retraining else "not needed"
        return f"Kind: {cls.kind} · Retraining: {retraining} · Seed: {seeds or 'none'}"

    @classmethod
    def doc(cls) -> str:
        """The docstring with `facts()` as its own paragraph after the title line.

        After the title, not before it: renderers take the first line (`summary_line`, the fix's
        one-line lead in the HTML report) as what the fix does.
        """
        title, _, body = inspect.cleandoc(cls.__doc__ or "").partition("\n")
        return "\n\n".join(part for part in (title, cls.facts(), body.strip("\n")) if part)

    @classmethod
    def summary_line(cls) -> str:
        return cls.doc().splitlines()[0] if cls.__doc__ else cls.slug


def parse_fix_list(text: str | Iterable[str]) -> list[str]:
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in names if n.strip()]
    for name in names:
        get_fix(name)  # raises InputError for unknown names
    return names


def apply_fixes(subject: Subject, names: Iterable[str], *, copy: bool = True, replay: bool = False) -> Subject:
    """A copy of `subject` with the named fixes applied in order (recorded in `fixes_applied`).

    Weights fixes act on a checkpoint's tensors, not on a subject (`modeldoctor fix` applies them); when
    `replay` is set (a checkpoint's recorded fixes, before its weights load) they are only recorded,
    since the saved tensors already carry them.
    """
    patched = subject.copy() if copy else subject
    for name in names:
        if name in patched.fixes_applied:
            continue  # fixes are idempotent: applying one twice changes nothing
        fix = get_fix(name)()
        if fix.needs == "weights":
            if not replay:
                raise InputError(f"fix {name!r} changes a checkpoint's tensors: apply it with `modeldoctor fix CKPT --apply {name}`")
            patched.fixes_applied.append(name)
            continue
        reason = fix.applicable(patched)
        if reason:
            raise InputError(f"fix {name!r} does not apply to subject {patched.name!r}: {reason}")
        fix.apply(patched)
        patched.fixes_applied.append(name)
    return patched
