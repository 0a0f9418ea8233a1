"""warmup-cosine: linear LR warmup, then cosine decay to 10% of the peak, instead of a constant LR."""
from __future__ import annotations

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Subject

ADAM_BETA2 = 0.999  # what `training.make_optimizer` builds Adam and AdamW with
MIN_LR_RATIO = 0.1


def warmup_steps_for(optimizer: str, steps: int) -> int:
    """max(1, steps // 10), and for Adam-family optimizers at most 2 / (1 - β2) = 2000 steps."""
    warmup = max(1, steps // 10)
    if optimizer in ("adam", "adamw"):
        warmup = min(warmup, round(2 / (1 - ADAM_BETA2)))
    return warmup


@register_fix
class WarmupCosine(Fix):
    """Warmup + cosine decay: ramp the LR up linearly, then decay it along a cosine to 10% of the peak.

    What it changes
    The training recipe only: `schedule = "warmup-cosine"`, `min_lr_ratio = 0.1`, and, unless the
    recipe already names a warmup length, `warmup_steps = max(1, recipe.steps // 10)`, capped for
    Adam and AdamW at 2 / (1 − β2) = 2000 steps. The peak LR stays the recipe's LR. The cosine
    spans the steps actually trained (`train(subject, steps)`), while the warmup length comes from
    `recipe.steps`: a run much shorter than the recipe spends more of it warming up.

    Why
    Large updates at the start, while Adam's second-moment estimates are still noise and
    Post-LN transformers have large gradients near the output, can blow up or stall training;
    a linear warmup avoids them (Goyal et al. 2017; Xiong et al. 2020). For Adam, an untuned
    warmup over 2 / (1 − β2) steps is a sound default (Ma & Yarats, AAAI 2021). Cosine decay to
    ~10% of the peak (Loshchilov & Hutter 2017; Chinchilla 2022) lets the end of training settle.
    Seed 001: "Learning Rate Schedule — Current: Constant LR / Better: Warmup + Cosine Decay";
    seed 000 (astro-multimodal) trains with no LR schedule.
    """

    slug = "warmup-cosine"
    kind = "recipe"
    needs_retraining = True
    seed = "001"

    def applicable(self, subject: Subject) -> str | None:
        recipe = subject.recipe
        if recipe.schedule == "warmup-cosine" and recipe.warmup_steps > 0:
            return f"the recipe already warms up ({recipe.warmup_steps} steps) and decays along a cosine"
        return None

    def apply(self, subject: Subject) -> None:
        recipe = subject.recipe
        recipe.schedule = "warmup-cosine"
        recipe.warmup_steps = recipe.warmup_steps or warmup_steps_for(recipe.optimizer, recipe.steps)
        recipe.min_lr_ratio = MIN_LR_RATIO
