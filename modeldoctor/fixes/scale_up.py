"""scale-up: rebuild the subject with a wider and deeper model (width/depth multipliers on its config)."""
from __future__ import annotations

from ..core.fix import Fix, apply_fixes
from ..core.registry import build_subject, register_fix
from ..core.subject import Subject

WIDTH_KEYS = ("d_model", "hidden", "hidden_size", "width", "embed_dim")
DEPTH_KEYS = ("n_layers", "num_layers", "depth")
WIDTH_FACTOR, DEPTH_FACTOR = 2, 2


def scale_keys(subject: Subject) -> dict[str, int]:
    """Config keys to multiply: the subject's `capabilities.scale_keys` {key: factor}, else by convention."""
    declared = subject.capabilities.scale_keys
    if declared:
        return dict(declared)
    keys = {key: WIDTH_FACTOR for key in WIDTH_KEYS if isinstance(subject.config.get(key), int)}
    keys.update({key: DEPTH_FACTOR for key in DEPTH_KEYS if isinstance(subject.config.get(key), int)})
    return keys


@register_fix
class ScaleUp(Fix):
    """Scale up: rebuild the model twice as wide and twice as deep, from the subject's own factory.

    What it changes
    Multiplies the width and depth entries of the subject's config (declared in
    `capabilities.scale_keys` as {key: factor}, or found by name: d_model/hidden/width ×2,
    n_layers/depth ×2), rebuilds the subject with its registered factory, and re-applies the fixes
    applied before this one. The stored config stays as it was; the checkpoint records `scale-up`,
    and loading replays it, so the saved weights fit. The rebuilt model starts from a fresh
    initialisation.

    Why
    Seed 000: the multimodal model was too small for the cross-modal task ("Scale up model
    capacity"), and a capacity bottleneck is one of the bug classes an overfit failure points at.
    A larger model trained with the same budget shows whether capacity was the limit. Seed 001
    gives the same advice once training works ("Scale up if working").
    """

    slug = "scale-up"
    kind = "surgery"
    needs_retraining = True
    seed = "000"

    def applicable(self, subject: Subject) -> str | None:
        return None if scale_keys(subject) else "its config has no width or depth entry (declare capabilities.scale_keys)"

    def apply(self, subject: Subject) -> None:
        scaled = {**subject.config, **{key: subject.config[key] * factor for key, factor in scale_keys(subject).items()}}
        rebuilt = apply_fixes(build_subject(subject.name, scaled), subject.fixes_applied, copy=False)
        for field in ("model", "train_batches", "eval_batches", "loss", "predict", "task", "recipe",
                      "queries", "masking", "codecs", "heads", "capabilities"):
            setattr(subject, field, getattr(rebuilt, field))
