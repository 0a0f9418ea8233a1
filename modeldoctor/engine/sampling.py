"""Train a sample patient and save it as a checkpoint (`modeldoctor sample`, `modeldoctor demo`)."""
from __future__ import annotations

from ..core.errors import InputError
from ..core.registry import build_subject, load_plugins
from ..samples import SAMPLES, Sample, train_sample
from .checkpoint import save_checkpoint


def sample_spec(name: str) -> Sample:
    """The registered sample `name`; an unknown name is an InputError listing the known ones."""
    load_plugins()
    if name not in SAMPLES:
        raise InputError(f"unknown sample {name!r} (known: {', '.join(sorted(SAMPLES))})")
    return SAMPLES[name]


def sample_steps(name: str, *, healthy: bool = False, steps: int | None = None) -> int:
    """How many steps `save_sample` will train (`steps`, else the variant's recipe), e.g. to size a progress bar."""
    spec = sample_spec(name)
    return steps or build_subject(name, spec.healthy if healthy else spec.failing).recipe.steps


def save_sample(name: str, path, **kwargs):
    """Train sample `name` (kwargs as `train_sample`) and write its checkpoint to `path`. Returns the Subject."""
    sample_spec(name)
    subject = train_sample(name, **kwargs)
    save_checkpoint(path, subject, extra={"sample": name, "variant": "healthy" if kwargs.get("healthy") else "failing"})
    return subject
