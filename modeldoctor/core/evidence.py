"""The three kinds of evidence a check can need, and the bundle a diagnosis runs on.

- `Subject` (core.subject): a live model with its data, loss, task and recipe. Checks that train
  copies or run forward passes need it.
- `Weights`: the tensors of a checkpoint, read one at a time, optionally with the optimizer and
  scheduler state saved beside them and a base checkpoint to compare against. No model class, no data.
- `Trace`: a recorded run of the user's own training loop (steps with loss, learning rates, norms).

A check declares the kind it needs in `Check.needs`; the runner runs the checks whose evidence is
present and skips the others with `MISSING[kind]` as the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol

import torch

from .subject import Subject

EVIDENCE_KINDS = ("subject", "weights", "trace")

# Why a check is skipped when its evidence is absent (one line, for the report).
MISSING = {
    "subject": "needs a live model with its data: a checkpoint that names a registered subject "
               "(modeldoctor.save_checkpoint) or --subject NAME",
    "weights": "needs the weights of a checkpoint",
    "trace": "needs a recorded training run (modeldoctor.watch)",
}


@dataclass(frozen=True)
class TensorInfo:
    """What a tensor is, without reading its values."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without the "torch." prefix

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


class TensorSource(Protocol):
    """Named tensors that can be listed and described without reading them, then read one at a time."""

    def names(self) -> list[str]: ...

    def info(self, name: str) -> TensorInfo: ...

    def load(self, name: str) -> torch.Tensor: ...


class InMemoryTensors:
    """A TensorSource over a state dict already in memory."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self._tensors = dict(tensors)

    def names(self) -> list[str]:
        return list(self._tensors)

    def info(self, name: str) -> TensorInfo:
        tensor = self._tensors[name]
        return TensorInfo(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))

    def load(self, name: str) -> torch.Tensor:
        return self._tensors[name]


@dataclass
class Weights:
    """The tensors of one checkpoint, with what was saved beside them.

    source: the tensors, read one at a time (`tensors()` yields them in order).
    optimizer: the optimizer's `state_dict()` ({"state": {index: {...}}, "param_groups": [...]}) when saved.
    scheduler: the LR scheduler's `state_dict()` when saved.
    extra: other plain entries of a training checkpoint (epoch, global_step, ...).
    base: the checkpoint to compare against (`--against`: the initial or pre-fine-tuning weights).
    path, format, sha256: where the tensors came from, for the report.
    cache: per-tensor summaries that probes memoize (`probes.weight_stats`), so the checks of one run
    read each tensor once between them.
    """

    source: TensorSource
    optimizer: dict | None = None
    scheduler: dict | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    base: "Weights | None" = None
    path: str | None = None
    format: str = ""
    sha256: str | None = None
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], **fields: Any) -> "Weights":
        return cls(source=InMemoryTensors(state), **fields)

    def names(self) -> list[str]:
        return self.source.names()

    def info(self, name: str) -> TensorInfo:
        return self.source.info(name)

    def tensor(self, name: str) -> torch.Tensor:
        return self.source.load(name)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) one at a time, so peak memory stays near the largest tensor."""
        for name in self.names():
            yield name, self.source.load(name)


@dataclass
class TraceStep:
    """One optimizer step of a recorded run. Open-ended scalars (per-group norms, ...) go in `values`."""

    step: int
    loss: float | None = None
    lrs: tuple[float, ...] = ()  # learning rate of each param group
    grad_norm: float | None = None
    update_norm: float | None = None
    training: bool | None = None  # model.training at the step
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class Trace:
    """A recorded run of the user's own training loop (`modeldoctor watch`)."""

    steps: list[TraceStep] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # optimizer class, param groups, tool version, ...
    path: str | None = None


@dataclass
class Evidence:
    """What a diagnosis has to go on: any of a live subject, a checkpoint's weights, a recorded run.

    missing: why a kind is absent when the reason is more specific than `MISSING` (a named subject
    that could not be built from NaN weights, say); the checks that need it are skipped with it.
    """

    subject: Subject | None = None
    weights: Weights | None = None
    trace: Trace | None = None
    missing: dict[str, str] = field(default_factory=dict)

    def why_missing(self, kind: str) -> str:
        return self.missing.get(kind) or MISSING[kind]

    def get(self, kind: str) -> Subject | Weights | Trace | None:
        if kind not in EVIDENCE_KINDS:
            raise ValueError(f"unknown evidence kind {kind!r} (known: {', '.join(EVIDENCE_KINDS)})")
        return getattr(self, kind)

    def kinds(self) -> list[str]:
        return [kind for kind in EVIDENCE_KINDS if getattr(self, kind) is not None]
