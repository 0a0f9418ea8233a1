"""load-balance-loss: add the Switch Transformer's auxiliary balancing loss (α = 0.01) to the objective."""
from __future__ import annotations

import torch

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Subject
from ..probes.routing import NO_ROUTERS, RouterPenaltyLoss, RouterRecord, subject_routers, switch_balance

ALPHA = 0.01


def switch_penalty(record: RouterRecord) -> torch.Tensor:
    """E·Σ_i f_i·P_i of one router over the batch: f counted from the dispatch, P differentiable."""
    return switch_balance(record.loads(), torch.cat(record.logits).softmax(-1))


@register_fix
class LoadBalanceLoss(Fix):
    """Switch auxiliary loss: add α·E·Σ_i f_i·P_i per MoE layer to the training loss, α = 0.01.

    What it changes
    The objective: the subject's loss plus, for every router (declared or detected, as in
    `expert-balance`), α·E·Σ_i f_i·P_i, where f_i is the share of the batch's token-expert
    assignments dispatched to expert i (counted, not differentiable) and P_i the mean router
    probability of expert i (differentiable). The router logits are captured by hooks during the
    subject's own forward, so the model code is not touched.

    Why
    The loss is minimal (α) at uniform routing and pushes probability away from overloaded experts,
    which is the pressure a top-k router lacks when a few experts win early. Fedus et al. (2021)
    use α = 1e-2; seed 004 configures `load_balance_loss_weight=0.01` and checks that "experts
    should be used equally". Since f counts the real dispatch, the router gets a balancing
    gradient even where the task gives it none (a combine that ignores the gate weights).
    """

    slug = "load-balance-loss"
    kind = "data"
    needs_retraining = True
    seed = "004"

    def applicable(self, subject: Subject) -> str | None:
        return None if subject_routers(subject) else NO_ROUTERS

    def apply(self, subject: Subject) -> None:
        subject.loss = RouterPenaltyLoss(subject.loss, subject_routers(subject), ALPHA, switch_penalty)
