"""masked-loss: average the per-position loss over masked positions only."""
from __future__ import annotations

import torch
from torch import nn

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Batch, MaskSpec, Subject


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·v / Σ w over positions (0 when no weight is set)."""
    return (values * weights).sum() / weights.sum().clamp(min=1)


class MaskedMeanLoss:
    """loss(model, batch) = Σ masked · ℓ / Σ masked, with ℓ the subject's per-position loss."""

    def __init__(self, masking: MaskSpec):
        self.masking = masking

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        per_position = self.masking.per_position_loss(model, batch)  # (B, T)
        return weighted_mean(per_position, self.masking.masked(batch).to(per_position.dtype))


@register_fix
class MaskedLoss(Fix):
    """Masked-only loss: average the loss over the masked positions, not over every position.

    What it changes
    Replaces the subject's loss with the mean of its per-position loss (`MaskSpec.per_position_loss`)
    over the masked positions (`MaskSpec.masked`). The model and the data stay as they are.

    Why
    Visible positions are in the model's input; counting them turns most of the objective into a
    copy task that hides how badly the masked prediction goes and dilutes its gradient. Seed 001's
    checklist: "Check loss computation - masked positions only"; MAE and BERT score masked tokens only.
    """

    slug = "masked-loss"
    kind = "data"
    needs_retraining = True
    seed = "001"

    def applicable(self, subject: Subject) -> str | None:
        return None if subject.masking is not None else "the subject declares no masked objective (capability `masking`)"

    def apply(self, subject: Subject) -> None:
        subject.loss = MaskedMeanLoss(subject.masking)
