"""aux-recon-loss: add a small reconstruction loss on visible positions to a masked objective."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Batch, MaskSpec, Subject
from .masked_loss import weighted_mean

WEIGHT = 0.1


class MaskedPlusVisibleLoss:
    """loss = mean over masked positions + WEIGHT · mean over visible positions of the per-position loss."""

    def __init__(self, masking: MaskSpec, weight: float = WEIGHT):
        self.masking, self.weight = masking, weight

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        per_position = self.masking.per_position_loss(model, batch)  # (B, T)
        masked = self.masking.masked(batch).to(per_position.dtype)  # (B, T)
        return weighted_mean(per_position, masked) + self.weight * weighted_mean(per_position, 1.0 - masked)


@register_fix
class AuxReconLoss(Fix):
    """Auxiliary reconstruction loss: the masked loss plus 0.1 × a reconstruction loss on visible tokens.

    What it changes
    Replaces the subject's loss with the per-position loss (`MaskSpec.per_position_loss`)
    averaged over the masked positions, plus 0.1 times its average over the visible positions.
    The weight keeps the copy task from dominating; the subject declares it in
    `capabilities.visible_loss_weight`, so `loss-masking` accepts the visible positions it adds.
    The model and the data stay as they are.

    Why
    Seed 000: "add auxiliary reconstruction loss on visible tokens" so that every token's
    representation is trained, not only the masked ones; with many modalities and few masked
    positions per step, the encoder otherwise sees sparse gradients.
    """

    slug = "aux-recon-loss"
    kind = "data"
    needs_retraining = True
    seed = "000"

    def applicable(self, subject: Subject) -> str | None:
        return None if subject.masking is not None else "the subject declares no masked objective (capability `masking`)"

    def apply(self, subject: Subject) -> None:
        subject.loss = MaskedPlusVisibleLoss(subject.masking)
        # Declared, so that loss-masking knows the visible positions count on purpose.
        subject.capabilities = replace(subject.capabilities, visible_loss_weight=WEIGHT)
