"""noisy-top-k: add Gaussian noise (std 0.1) to the router logits while training."""
from __future__ import annotations

import torch
from torch import nn

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Subject
from ..probes.routing import NO_ROUTERS, subject_routers

NOISE_STD = 0.1


class GateNoise:
    """Forward hook on a gate: logits + N(0, std²) in training mode; eval outputs are untouched."""

    def __init__(self, std: float = NOISE_STD):
        self.std = std

    def __call__(self, module: nn.Module, _inputs, output):
        if not module.training:
            return None
        if isinstance(output, (tuple, list)):  # gates that return (logits, ...)
            return type(output)([output[0] + torch.randn_like(output[0]) * self.std, *output[1:]])
        return output + torch.randn_like(output) * self.std


@register_fix
class NoisyTopK(Fix):
    """Noisy top-k gating: add N(0, 0.1²) noise to every router's logits in training.

    What it changes
    Every router's gate module (declared or detected, as in `expert-balance`) gets a forward hook
    that adds Gaussian noise with std 0.1 to its logits while the model is in training mode, so
    the top-k choice explores experts whose logits are close to the winners'. Evaluation is
    unchanged. The hook is part of the module: copies of the model carry it, and loading a
    checkpoint that records this fix re-attaches it.

    Why
    Without noise, ties and near-ties are broken the same way for every token, and an expert that
    loses early never gets tokens again, so it never gets a gradient to catch up. Shazeer et al.
    (2017) add (learned) Gaussian noise before the top-k; Switch and ST-MoE use multiplicative
    jitter (0.01). Seed 004 configures `moe_noise_std=0.1` ("Noise Std (0.05-0.2): Exploration
    during training").
    """

    slug = "noisy-top-k"
    kind = "surgery"
    needs_retraining = True
    seed = "004"

    def applicable(self, subject: Subject) -> str | None:
        return None if subject_routers(subject) else NO_ROUTERS

    def apply(self, subject: Subject) -> None:
        modules = dict(subject.model.named_modules())
        for router in subject_routers(subject):
            modules[router.gate].register_forward_hook(GateNoise())
