"""Train a sample patient and save it as a checkpoint (`modeldoctor sample`, `modeldoctor demo`)."""
from __future__ import annotations

from ..samples import train_sample
from .checkpoint import save_checkpoint


def save_sample(name: str, path, **kwargs):
    """Train sample `name` (kwargs as `train_sample`) and write its checkpoint to `path`. Returns the Subject."""
    subject = train_sample(name, **kwargs)
    save_checkpoint(path, subject, extra={"sample": name, "variant": "healthy" if kwargs.get("healthy") else "failing"})
    return subject
