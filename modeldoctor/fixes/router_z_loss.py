"""router-z-loss: add the ST-MoE router z-loss (coefficient 1e-3) to the objective."""
from __future__ import annotations

import torch

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Subject
from ..probes.routing import NO_ROUTERS, RouterPenaltyLoss, RouterRecord, subject_routers, z_loss

COEFFICIENT = 1e-3


def z_penalty(record: RouterRecord) -> torch.Tensor:
    """Mean over the batch's tokens of logsumexp(router logits)²."""
    return z_loss(torch.cat(record.logits))


@register_fix
class RouterZLoss(Fix):
    """Router z-loss: penalise large router logits with 1e-3 · mean(logsumexp(logits)²) per MoE layer.

    What it changes
    The objective: the subject's loss plus 1e-3 times, for every router (declared or detected),
    the mean over tokens of the squared log-sum-exp of its logits, captured by hooks during the
    subject's own forward.

    Why
    Router logits that grow without bound make the softmax saturate and the routing brittle
    (round-off in the exponentials, sudden switches between experts, loss spikes). Zoph et al.
    (2022, ST-MoE) add this z-loss with coefficient 1e-3 next to the balancing loss; it keeps the
    logits small without changing which expert wins. Seed 004 trains with a balancing loss; this
    is its companion in ST-MoE's recipe. `expert-balance` prescribes it when the measured z-loss
    is large.
    """

    slug = "router-z-loss"
    kind = "data"
    needs_retraining = True
    seed = "004"

    def applicable(self, subject: Subject) -> str | None:
        return None if subject_routers(subject) else NO_ROUTERS

    def apply(self, subject: Subject) -> None:
        subject.loss = RouterPenaltyLoss(subject.loss, subject_routers(subject), COEFFICIENT, z_penalty)
