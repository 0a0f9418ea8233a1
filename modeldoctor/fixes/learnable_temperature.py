"""learnable-temperature: make the contrastive temperature a trained parameter, initialised as CLIP does."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Subject

CLIP_INIT_TAU = 0.07


def temperature_owner(subject: Subject) -> tuple[nn.Module, str] | None:
    """(module holding it, attribute name) of the tensor named by `capabilities.temperature`, or None."""
    qualified = subject.capabilities.temperature
    if not qualified:
        return None
    owner_name, _, name = qualified.rpartition(".")
    try:
        owner = subject.model.get_submodule(owner_name) if owner_name else subject.model
    except AttributeError:
        return None
    return (owner, name) if name in owner._buffers or name in owner._parameters else None


@register_fix
class LearnableTemperature(Fix):
    """Learnable temperature: log(1/τ) becomes a trained parameter starting at τ = 0.07.

    What it changes
    The tensor named by `capabilities.temperature`, which holds log(1/τ) (CLIP's
    `logit_scale`), becomes a trainable `nn.Parameter` of the same name initialised to
    log(1/0.07) ≈ 2.66; a buffer is replaced, a frozen parameter is re-initialised and unfrozen.
    The state-dict key does not change. The subject's loss must read the temperature from the
    module at every call (`model.logit_scale`), not copy it once at build time, and should clamp
    it at log(100) as CLIP does so the logits cannot blow up.

    Why
    With cosine similarities in [-1, 1], τ sets how sharp the InfoNCE softmax is: at τ = 1 the
    logits span only ±1, so the loss cannot fall far below log(batch) and hard negatives barely
    weigh. A learned temperature lets the model choose (CLIP: Radford et al., 2021, init 0.07,
    clamp at 100). Seed 002: "Implement modality-specific temperature scaling for better alignment".
    """

    slug = "learnable-temperature"
    kind = "surgery"
    needs_retraining = True
    seed = "002"

    def applicable(self, subject: Subject) -> str | None:
        if not subject.capabilities.temperature:
            return "the subject declares no temperature (capability `temperature`)"
        found = temperature_owner(subject)
        if found is None:
            return f"the model has no buffer or parameter {subject.capabilities.temperature!r}"
        owner, name = found
        if name in owner._parameters and owner._parameters[name].requires_grad:
            return "the temperature is already a trainable parameter"
        return None

    def apply(self, subject: Subject) -> None:
        owner, name = temperature_owner(subject)
        current = owner._buffers.pop(name) if name in owner._buffers else owner._parameters.pop(name)
        value = torch.full_like(current.detach(), math.log(1 / CLIP_INIT_TAU))
        owner.register_parameter(name, nn.Parameter(value))
