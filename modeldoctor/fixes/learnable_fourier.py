"""learnable-fourier: turn fixed Fourier-feature frequency buffers into trainable parameters."""
from __future__ import annotations

from torch import nn

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Subject

FREQUENCY_NAMES = ("B", "freq", "freqs", "frequencies", "fourier_basis", "basis")


def fourier_buffers(subject: Subject) -> list[str]:
    """Qualified names of frequency buffers: declared by the subject, else found by convention.

    By convention, a floating 2-D buffer named like a frequency matrix (B, freqs, ...) or held by a
    module whose class name mentions Fourier.
    """
    declared = subject.capabilities.fourier_buffers
    if declared:
        return list(declared)
    found = []
    for module_name, module in subject.model.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is None or not buffer.is_floating_point() or buffer.dim() != 2:
                continue
            if name in FREQUENCY_NAMES or "fourier" in type(module).__name__.lower():
                found.append(f"{module_name}.{name}" if module_name else name)
    return found


@register_fix
class LearnableFourier(Fix):
    """Learnable Fourier features: make fixed random frequency matrices trainable.

    What it changes
    Every Fourier-feature frequency buffer (declared in `capabilities.fourier_buffers`, or a
    2-D float buffer named like B/freqs or owned by a module whose class name mentions Fourier)
    becomes an `nn.Parameter` with the same name and values, so the optimizer tunes the
    frequencies. The state-dict keys do not change.

    Why
    Random Fourier features γ(v) = [cos 2πBv, sin 2πBv] work only when σ of B suits the data
    (Tancik et al., 2020): too small blurs, too large gives noise. Learning B lets the network fit
    the frequencies to the field (Li et al., 2021). Seed 003 ("Fix 3: Learnable Fourier Features
    (OPTIMIZATION)") expects +1-2 dB.
    """

    slug = "learnable-fourier"
    kind = "surgery"
    needs_retraining = True
    seed = "003"

    def applicable(self, subject: Subject) -> str | None:
        return None if fourier_buffers(subject) else "found no Fourier frequency buffer in the model"

    def apply(self, subject: Subject) -> None:
        for qualified in fourier_buffers(subject):
            owner_name, _, name = qualified.rpartition(".")
            owner = subject.model.get_submodule(owner_name) if owner_name else subject.model
            value = owner._buffers.pop(name)
            owner.register_parameter(name, nn.Parameter(value.detach().clone()))
