"""clamp-output: bound predictions to the target range, keeping gradients alive."""
from __future__ import annotations

import torch
from torch import nn

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Subject


class StraightThroughClamp:
    """Forward hook: clamp the output to [low, high]; gradients pass as if unclamped.

    A plain clamp in training zeroes the gradient of every out-of-range prediction, so those
    outputs can never come back (REFERENCE-checks §8); the straight-through form avoids that.
    """

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return output + (output.clamp(self.low, self.high) - output).detach()


@register_fix
class ClampOutput(Fix):
    """Output clamping: bound the model's predictions to the declared target range.

    What it changes
    Adds a forward hook on the subject's output module (the model unless the subject declares
    `capabilities.output_module`) that clamps predictions to `task.value_range`. The clamp is
    straight-through: values are bounded, but gradients flow as if unclamped, so predictions
    that stray out of range are still pulled back instead of going silent. The bound acts at once,
    on evaluation too; retraining lets the model make use of it. The hook is re-added when a
    patched checkpoint is loaded.

    Why
    Seed 003 ("Fix 2: Output Clamping (IMPORTANT)"): the unbounded ODE output could diverge
    outside [0, 1]; clamping gave +2-3 dB. Out-of-range predictions are pure error when targets
    are bounded.
    """

    slug = "clamp-output"
    kind = "surgery"
    needs_retraining = False
    seed = "003"

    def applicable(self, subject: Subject) -> str | None:
        if subject.task.kind != "regression" or subject.task.value_range is None:
            return "needs a regression task with a declared value_range"
        return None

    def apply(self, subject: Subject) -> None:
        low, high = subject.task.value_range
        target = subject.capabilities.output_module or subject.model
        if isinstance(target, str):
            target = subject.model.get_submodule(target)
        target.register_forward_hook(StraightThroughClamp(float(low), float(high)))
