"""router-z-loss: add the ST-MoE router z-loss (coefficient 1e-3) to the objective."""
from __future__ import annotations

import torch
from torch import nn

from ..fix import Fix
from ..registry import register_fix
from ..routing import Router, differentiable_routing, subject_routers, z_loss
from ..subject import Batch, LossFn, Subject

COEFFICIENT = 1e-3


class ZLossObjective:
    """loss(model, batch) = task loss + c · Σ_layers mean_tokens(logsumexp(router logits)²)."""

    def __init__(self, loss: LossFn, routers: list[Router], coefficient: float = COEFFICIENT):
        self.loss, self.routers, self.coefficient = loss, routers, coefficient

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        with differentiable_routing(model, self.routers) as capture:
            loss = self.loss(model, batch)
        penalties = [z_loss(torch.cat(record.logits)) for record in capture.records.values() if record.logits]
        return loss + self.coefficient * torch.stack(penalties).sum() if penalties else loss


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
    logits small without changing which expert wins. `expert-balance` prescribes it when the
    measured z-loss is large.

    Seed
    004 (dreaming-moe), as the companion of its balancing loss; ST-MoE's recipe.

    Retraining
    Needed: the loss only acts while training.
    """

    slug = "router-z-loss"
    kind = "data"
    needs_retraining = True
    seed = "004"

    def applicable(self, subject: Subject) -> str | None:
        return None if subject_routers(subject) else "no mixture-of-experts router found (see `expert-balance`)"

    def apply(self, subject: Subject) -> None:
        subject.loss = ZLossObjective(subject.loss, subject_routers(subject))
