"""Typed capabilities: what a Subject can declare beyond its model, data and loss, to unlock checks and fixes.

Every capability is a field of `Capabilities`. Names of modules, parameters and buffers are checked
against the model (`check_names`): a name that matches nothing is an InputError naming the nearest
real names, so a typo (a prefix written `"image."`) cannot silently turn a check off.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .errors import InputError

Batch = Any


@dataclass(frozen=True)
class RouterSpec:
    """A mixture-of-experts router the structure-based detection cannot find (e.g. fused expert weights).

    gate: module emitting one logit per expert. experts: the module holding the experts as children
    (optional). num_experts: E (needed when `experts` is not given). top_k: experts per token.
    """

    gate: str
    experts: str | None = None
    num_experts: int | None = None
    top_k: int | None = None


@dataclass
class Capabilities:
    """Optional declarations of a Subject. Each field documents what it unlocks.

    param_groups: {group or tower: [module prefixes]}: per-group gradient norms (frozen, dead, starved
        towers in grad-norms), lora-all-towers. A prefix matches a parameter when the name equals it or
        continues with a dot.
    routers: [RouterSpec]: expert-balance and the MoE fixes, where detection cannot find them.
    token_modalities: batch -> {modality: bool mask over key positions}: modality shares in attention.
    embedding_layer: module emitting (B, S, d) token embeddings: captum attribution per modality.
    attentions: (model, batch) -> [(B, H, L, S) weights]: attention, for models that return them.
    attribution_output: (model, batch) -> (N,) scalar per example to attribute (default: from predict).
    embed: (model, batch) -> {modality: (B, D) embeddings}, row i the same item: retrieval.
    temperature: buffer or parameter holding log(1/τ): learnable-temperature.
    grid_shape: (H, W) of a field's query space: images in mean-collapse and query-coverage.
    fourier_buffers: frequency buffers (found by convention when not declared): learnable-fourier.
    output_module: module whose output is the prediction (default: the model): clamp-output.
    norm_blocks: custom blocks with a `norm_first` flag: pre-ln.
    visible_loss_weight: the weight an objective deliberately gives visible positions: loss-masking.
    codebook_resize_factor: an int for every codec or {codec: int} (default 16): codebook-resize.
    codebook_dependents: {codec: [modules whose vocabulary is its K]}: codebook-resize.
    scale_keys: {config key: factor} (found by name when not declared): scale-up.
    """

    param_groups: dict[str, list[str]] | None = None
    routers: list[RouterSpec] | None = None
    token_modalities: Callable[[Batch], dict[str, torch.Tensor]] | None = None
    embedding_layer: str | None = None
    attentions: Callable[[nn.Module, Batch], list[torch.Tensor]] | None = None
    attribution_output: Callable[[nn.Module, Batch], torch.Tensor] | None = None
    embed: Callable[[nn.Module, Batch], dict[str, torch.Tensor]] | None = None
    temperature: str | None = None
    grid_shape: tuple[int, int] | None = None
    fourier_buffers: list[str] | None = None
    output_module: str | None = None
    norm_blocks: list[str] = field(default_factory=list)
    visible_loss_weight: float | None = None
    codebook_resize_factor: int | dict[str, int] | None = None
    codebook_dependents: dict[str, list[str]] | None = None
    scale_keys: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.routers is not None:
            self.routers = [as_router_spec(spec) for spec in self.routers]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "Capabilities":
        """Capabilities from keyword-style values; an unknown name is an InputError naming the nearest."""
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                raise InputError(f"unknown capability {key!r}{nearest(str(key), known)} (known: {', '.join(known)})")
        return cls(**dict(values))


def as_router_spec(spec: RouterSpec | str | Mapping[str, Any]) -> RouterSpec:
    if isinstance(spec, RouterSpec):
        return spec
    if isinstance(spec, str):
        return RouterSpec(gate=spec)
    return RouterSpec(**dict(spec))


def nearest(name: str, candidates: list[str], n: int = 3) -> str:
    """"; nearest: 'a', 'b'" for the closest candidates, or "" when none is close."""
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    return f"; nearest: {', '.join(repr(c) for c in close)}" if close else ""


def check_names(capabilities: Capabilities, model: nn.Module, codec_modules: Mapping[str, str | None] = {}) -> None:
    """Raise InputError when a declared name matches nothing in `model`, naming the nearest real names."""
    modules = [name for name, _ in model.named_modules() if name]
    tensors = [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()]

    def module(label: str, name: str | None) -> None:
        if name is not None and name not in modules:
            raise InputError(f"capability {label}: no module {name!r} in the model{nearest(name, modules)}")

    def tensor(label: str, name: str | None) -> None:
        if name is not None and name not in tensors:
            raise InputError(f"capability {label}: no parameter or buffer {name!r} in the model{nearest(name, tensors)}")

    for group, prefixes in (capabilities.param_groups or {}).items():
        for prefix in prefixes:
            if not any(n == prefix or n.startswith(prefix + ".") for n in modules + tensors):
                raise InputError(f"capability param_groups[{group!r}]: prefix {prefix!r} matches no module or parameter "
                                 f"of the model{nearest(prefix.rstrip('.'), modules)}")
    for i, spec in enumerate(capabilities.routers or []):
        module(f"routers[{i}].gate", spec.gate)
        module(f"routers[{i}].experts", spec.experts)
        if spec.experts is None and spec.num_experts is None:
            raise InputError(f"capability routers[{i}] ({spec.gate!r}): declare num_experts or experts")
    module("embedding_layer", capabilities.embedding_layer)
    module("output_module", capabilities.output_module)
    for name in capabilities.norm_blocks:
        module("norm_blocks", name)
    tensor("temperature", capabilities.temperature)
    for name in capabilities.fourier_buffers or []:
        tensor("fourier_buffers", name)
    for codec, names in (capabilities.codebook_dependents or {}).items():
        for name in names:
            module(f"codebook_dependents[{codec!r}]", name)
    for codec, name in codec_modules.items():
        module(f"codecs[{codec!r}].module", name)
