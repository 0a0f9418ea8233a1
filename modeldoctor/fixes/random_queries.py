"""random-queries: sample fresh query positions from the whole query space every step."""
from __future__ import annotations

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import MappedBatches, Subject


@register_fix
class RandomQueries(Fix):
    """Random query sampling: every training step queries fresh positions drawn from the whole space.

    What it changes
    Wraps the subject's training batches so that each batch's queries are redrawn at random
    from the full query space (`QuerySpace.resample`), instead of the positions the data loader
    chose. Evaluation is untouched.

    Why
    Seed 003: training always queried the same 51 pixels (0, 5, ..., 250) and evaluation all 1024,
    so 95% of the field was out of distribution and the model predicted the mean (~6 dB). Drawing
    random pixels every step teaches interpolation everywhere (the seed's "Fix 1: Random Query
    Point Sampling (CRITICAL)" expects +20-25 dB).
    """

    slug = "random-queries"
    kind = "data"
    needs_retraining = True
    seed = "003"

    def applicable(self, subject: Subject) -> str | None:
        if subject.queries is None:
            return "the subject declares no query coordinates (capability `queries`)"
        if subject.queries.resample is None:
            return "the subject's QuerySpace has no `resample` function"
        return None

    def apply(self, subject: Subject) -> None:
        subject.train_batches = MappedBatches(subject.train_batches, subject.queries.resample)
