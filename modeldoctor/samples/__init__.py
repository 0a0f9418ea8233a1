"""Sample patients: the seed stories as subjects with a failing and a healthy variant.

Importing this package registers them. `modeldoctor sample NAME` trains one and saves it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..core.registry import build_subject
from ..probes.training import seed_everything, train


@dataclass(frozen=True)
class Sample:
    name: str  # the registered subject
    seed_story: str  # file in shared/seeds
    failing: dict = field(default_factory=dict)
    healthy: dict = field(default_factory=dict)
    summary: str = ""


SAMPLES: dict[str, Sample] = {}


def register_sample(sample: Sample) -> Sample:
    SAMPLES[sample.name] = sample
    return sample


def train_sample(name: str, *, healthy: bool = False, seed: int = 0, steps: int | None = None, on_step=None):
    """Build the sample's failing (or healthy) variant and train it with its recipe. Returns the Subject."""
    sample = SAMPLES[name]
    seed_everything(seed)
    subject = build_subject(sample.name, sample.healthy if healthy else sample.failing)
    train(subject, steps, on_step=on_step)
    return subject


from . import astro_multimodal, crossmodal_retrieval, dreaming_moe, moving_tokens, sparse_field  # noqa: E402,F401  (they register themselves)
