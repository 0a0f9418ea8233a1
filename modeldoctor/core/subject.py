"""The Subject: everything a registered model gives the doctor.

A factory registered with ``@modeldoctor.register_subject(name)`` turns a config dict into a Subject.
Checks read what they need from it and skip (with a reason) when a capability is missing.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from .capabilities import Capabilities, check_names

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
PredictFn = Callable[[nn.Module, Batch], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class Task:
    """What the model predicts and how it is scored.

    kind: "regression", "classification", "tokens" or "retrieval".
    value_range: (low, high) of regression targets; PSNR uses high - low as its data range.
    metric: the task metric that `bench` compares ("psnr_db", "mse", "mae", "accuracy").
    num_classes: classes or vocabulary size for classification and tokens.
    ignore_index: target value that marks positions not to score (as in F.cross_entropy).

    For classification and tokens, `predict` returns logits (..., C) and integer targets (...).
    """

    kind: str = "regression"
    value_range: tuple[float, float] | None = None
    metric: str = "psnr_db"
    higher_is_better: bool = True
    num_classes: int | None = None
    ignore_index: int = -100

    @property
    def is_categorical(self) -> bool:
        return self.kind in ("classification", "tokens")


@dataclass
class Recipe:
    """How the subject is trained; `bench` and the training checks reuse it."""

    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    steps: int = 1000
    schedule: str = "constant"  # constant | warmup-cosine
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float | None = None


@dataclass
class QuerySpace:
    """Capability of query-based models (neural fields, masked modelling).

    coords(batch) -> (B, Q, D) query coordinates that the batch asks the model about.
    space: (P, D) every position a query can take (e.g. all pixels of the field).
    resample(batch, generator) -> batch whose queries are drawn afresh from `space`
        (used by the `random-queries` fix); None when the subject cannot do that.
    """

    coords: Callable[[Batch], torch.Tensor]
    space: torch.Tensor
    resample: Callable[[Batch, torch.Generator], Batch] | None = None


@dataclass
class MaskSpec:
    """Capability of masked-prediction objectives (masked or future tokens).

    masked(batch) -> (B, T) bool: positions hidden from the input that the model must predict.
    targets(batch) -> (B, T) targets at every position; with_targets(batch, targets) -> batch.
    per_position_loss(model, batch) -> (B, T) unreduced loss, so an objective can choose what counts.
    """

    masked: Callable[[Batch], torch.Tensor]
    targets: Callable[[Batch], torch.Tensor]
    with_targets: Callable[[Batch, torch.Tensor], Batch]
    per_position_loss: Callable[[nn.Module, Batch], torch.Tensor]


@dataclass
class Codec:
    """Capability: the tokenizer of one modality (a VQ codebook, scalar binning).

    kind: "image" (B, [C,] H, W), "signal" (B, L) or "scalar" (B,).
    encode(x) -> integer codes; decode(codes) -> reconstruction shaped like x.
    num_codes: K, the codebook size or number of bins.
    samples: re-iterable of held-out inputs `x` of this modality, for the round trip.
    bin_width: for scalar binning, the width of one bin (a round trip must land within half of it).
    value_range: (low, high) of the data, for PSNR (default: the range of the samples).
    module: qualified name of the nn.Module holding the codebook, for codebook fixes (optional).
    """

    kind: str
    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    num_codes: int
    samples: Iterable[torch.Tensor]
    bin_width: float | None = None
    value_range: tuple[float, float] | None = None
    module: str | None = None


@dataclass
class Head:
    """Capability: one output head of a multi-head model, scored on its own against a trivial predictor.

    kind: "regression", "signal" (a 1-D series per example), "classification" or "tokens".
    predict(model, batch) -> (prediction, target): values for regression/signal, logits and
        integer labels for classification/tokens.
    """

    kind: str
    predict: PredictFn
    num_classes: int | None = None


class MappedBatches:
    """A re-iterable view of `batches` with `fn(batch, generator)` applied to each batch.

    The generator is re-seeded from torch's global RNG at each pass, so a seeded run is reproducible.
    """

    def __init__(self, batches: Iterable[Batch], fn: Callable[[Batch, torch.Generator], Batch]):
        self.batches, self.fn = batches, fn

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
        for batch in self.batches:
            yield self.fn(batch, generator)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


@dataclass
class Subject:
    """A model together with its data, objective, task and training recipe.

    Required: model, train_batches, eval_batches, loss, predict, task, recipe.
    Optional capabilities unlock checks: `queries` (query-coverage, random-queries), `masking`
    (loss-masking, masked-loss), `codecs` (codec-roundtrip), `heads` (per-head mean-collapse), and the
    typed `capabilities` (see `Capabilities`: param groups, routers, modalities, ...). A plain mapping
    given as `capabilities` is converted (an unknown name is an InputError).
    `config` is what the factory was built from; it is saved in checkpoints.
    """

    name: str
    model: nn.Module
    train_batches: Iterable[Batch]
    eval_batches: Iterable[Batch]
    loss: LossFn
    predict: PredictFn
    task: Task = field(default_factory=Task)
    recipe: Recipe = field(default_factory=Recipe)
    config: dict = field(default_factory=dict)
    queries: QuerySpace | None = None
    masking: MaskSpec | None = None
    codecs: dict[str, Codec] = field(default_factory=dict)
    heads: dict[str, Head] = field(default_factory=dict)
    capabilities: Capabilities = field(default_factory=Capabilities)
    fixes_applied: list[str] = field(default_factory=list)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.capabilities, Capabilities):
            self.capabilities = Capabilities.from_mapping(self.capabilities or {})

    def validate(self) -> None:
        """Raise InputError when a declared capability names a module or tensor the model lacks."""
        check_names(self.capabilities, self.model, {name: codec.module for name, codec in self.codecs.items()})

    def copy(self) -> "Subject":
        """A copy whose model (and recipe) can be changed without touching this one.

        Model and codecs are deep-copied together, so codec methods bound to the model's modules
        follow the copy; codec samples (data) are shared, not copied.
        """
        memo = {id(codec.samples): codec.samples for codec in self.codecs.values()}
        model, codecs = copy.deepcopy((self.model, self.codecs), memo)
        return replace(
            self,
            model=model,
            codecs=codecs,
            recipe=replace(self.recipe),
            config=copy.deepcopy(self.config),
            capabilities=replace(self.capabilities),
            fixes_applied=list(self.fixes_applied),
        )


class TensorBatches:
    """Re-iterable (x, y) mini-batches over tensors, reshuffled each pass (like a DataLoader)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 32, shuffle: bool = True):
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.x)) if self.shuffle else torch.arange(len(self.x))
        for start in range(0, len(self.x), self.batch_size):
            rows = order[start : start + self.batch_size]
            yield self.x[rows], self.y[rows]


def tensor_predict(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    return model(x), y


def mse_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    prediction, target = tensor_predict(model, batch)
    return torch.mean((prediction - target) ** 2)


def regression_subject(
    name: str,
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    evaluation: tuple[torch.Tensor, torch.Tensor],
    *,
    batch_size: int = 32,
    value_range: tuple[float, float] | None = None,
    recipe: Recipe | None = None,
    **fields: Any,
) -> Subject:
    """A Subject for the common case: a model mapping x to y, trained with MSE on (x, y) tensors."""
    return Subject(
        name=name,
        model=model,
        train_batches=TensorBatches(*train, batch_size=batch_size),
        eval_batches=TensorBatches(*evaluation, batch_size=batch_size, shuffle=False),
        loss=mse_loss,
        predict=tensor_predict,
        task=Task(kind="regression", value_range=value_range, metric="psnr_db"),
        recipe=recipe or Recipe(),
        **fields,
    )
