"""lora-all-towers: give every declared tower that cannot adapt a LoRA update on its linear layers."""
from __future__ import annotations

from torch import nn

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Subject
from ..nn.lora import DEFAULT_ALPHA, DEFAULT_RANK, wrap_lora
from ..probes.gradtrace import in_group


def frozen_towers(subject: Subject) -> list[str]:
    """Declared groups (`param_groups`) with linear layers but no trainable parameter."""
    groups = subject.capabilities.param_groups or {}
    named = list(subject.model.named_parameters())
    modules = list(subject.model.named_modules())
    frozen = []
    for group, prefixes in groups.items():
        has_linear = any(isinstance(m, nn.Linear) and in_group(name, prefixes) for name, m in modules)
        trainable = any(p.requires_grad and in_group(name, prefixes) for name, p in named)
        if has_linear and not trainable:
            frozen.append(group)
    return frozen


@register_fix
class LoraAllTowers(Fix):
    """LoRA on every tower: wrap the frozen linear layers of towers that have nothing to train.

    What it changes
    For every declared parameter group (`capabilities.param_groups`, one per modality tower)
    with no trainable parameter, every plain `nn.Linear` under its module prefixes, projections
    included, becomes a `LoRALinear` of rank 8 (alpha 16): the base weight and bias stay frozen
    and keep their names, and a trainable update B·A with B = 0 is added, so the model computes
    exactly what it did until training moves B. Towers that already train are left as they are.

    Why
    PEFT's `target_modules` match layer names; a tower whose layers are named differently gets no
    adapter and, frozen, never learns: retrieval to and from its modality stays at chance while
    the loss still falls on the other pairs. Seed 002: "apply to more layers in underperforming
    modalities" under "Optimize LoRA implementation". LoRA keeps the pretrained weights and trains
    2·r·(in + out) numbers per layer.
    """

    slug = "lora-all-towers"
    kind = "surgery"
    needs_retraining = True
    seed = "002"

    def applicable(self, subject: Subject) -> str | None:
        if not subject.capabilities.param_groups:
            return "the subject declares no towers (capability `param_groups`)"
        return None if frozen_towers(subject) else "every declared tower already has trainable parameters"

    def apply(self, subject: Subject) -> None:
        groups = subject.capabilities.param_groups
        for group in frozen_towers(subject):
            for prefix in groups[group]:
                wrap_lora(subject.model, prefix, rank=DEFAULT_RANK, alpha=DEFAULT_ALPHA)
