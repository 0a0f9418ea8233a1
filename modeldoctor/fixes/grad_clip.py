"""grad-clip: clip the global gradient norm to 1.0 before every optimizer step."""
from __future__ import annotations

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Subject

MAX_NORM = 1.0


@register_fix
class GradClip(Fix):
    """Gradient clipping: rescale the gradients whenever their global L2 norm exceeds 1.0.

    What it changes
    The training recipe only: `grad_clip = 1.0`. The training loop then calls
    `torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)` between backward and the optimizer
    step, so the optimizer never sees a global gradient norm above 1.0. It acts only in training.

    Why
    One bad batch or a sharp region of the loss can produce a gradient large enough to throw
    the weights far away (loss spikes, NaN); clipping bounds every step while leaving ordinary
    steps untouched. max_norm = 1.0 is the de-facto default (HF Trainer, GPT-style LLMs,
    DeepSeek-V3). If more than about half of the steps get clipped, clipping is acting as an LR
    cut: lower the LR instead. With Adam, clipping bounds a single spike but not a too-high LR,
    since Adam's step size does not scale with the gradient. Seed 000: "If loss explodes →
    decrease learning rate or add gradient clipping"; seed 004 clips with
    `clip_grad_norm_(model.parameters(), 1.0)` and says "Don't train without gradient clipping".
    """

    slug = "grad-clip"
    kind = "recipe"
    needs_retraining = True
    seed = "000, 004"

    def applicable(self, subject: Subject) -> str | None:
        if subject.recipe.grad_clip:
            return f"the recipe already clips gradients at max_norm {subject.recipe.grad_clip:g}"
        return None

    def apply(self, subject: Subject) -> None:
        subject.recipe.grad_clip = MAX_NORM
