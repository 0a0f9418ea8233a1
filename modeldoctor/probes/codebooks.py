"""Codebook measurement for the codec checks and fixes: find a codec's codebook and quantizer, record the
latents it quantizes, rebind a codec to a patched copy. The protocol a codec must follow is in `modeldoctor.nn.vq`.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..core.subject import Codec
from ..nn.vq import CODEBOOK_NAMES


def codebook_owner(module: nn.Module, num_codes: int) -> tuple[nn.Module, str] | None:
    """(quantizer Q, attribute name) of the codebook with `num_codes` rows in `module` or one of its submodules."""
    for owner in module.modules():
        for name in CODEBOOK_NAMES:
            value = getattr(owner, name, None)
            weight = value.weight if isinstance(value, nn.Embedding) else value
            if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[0] == num_codes:
                return owner, name
    return None


def codebook_weight(owner: nn.Module, name: str) -> torch.Tensor:
    value = getattr(owner, name)
    return value.weight if isinstance(value, nn.Embedding) else value


@contextmanager
def recorded_latents(quantizer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the latents (N, D) passed to `quantizer.encode(z)` or `quantizer(z)` (outermost call only).

    The recorder is borrowed: the instance's `encode` is shadowed and a forward pre/post hook pair
    attached, and both are removed in `finally`.
    """
    captured: list[torch.Tensor] = []
    depth = [0]
    had_own = "encode" in quantizer.__dict__
    original = quantizer.encode

    def enter(z) -> None:
        if depth[0] == 0 and isinstance(z, torch.Tensor):
            captured.append(z.detach().reshape(-1, z.shape[-1]))
        depth[0] += 1

    def encode(z, *args, **kwargs):
        enter(z)
        try:
            return original(z, *args, **kwargs)
        finally:
            depth[0] -= 1

    handles = [
        quantizer.register_forward_pre_hook(lambda module, args: enter(args[0] if args else None)),
        quantizer.register_forward_hook(lambda module, args, output: depth.__setitem__(0, depth[0] - 1)),
    ]
    quantizer.encode = encode
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
        if had_own:
            quantizer.encode = original
        else:
            del quantizer.encode


@dataclass
class CodecTarget:
    """A fixable codec: its name, the module M it names, and the quantizer Q holding the codebook."""

    name: str
    codec: Codec
    module: nn.Module
    quantizer: nn.Module
    attribute: str  # the codebook's attribute name on Q

    @property
    def codebook(self) -> torch.Tensor:  # (K, D)
        return codebook_weight(self.quantizer, self.attribute)


def codec_target(subject, name: str) -> CodecTarget | str:
    """The codec `name` of `subject` as a CodecTarget, or why it does not follow the protocol."""
    codec = subject.codecs[name]
    if not codec.module:
        return f"codec '{name}' declares no `module` holding its codebook"
    try:
        module = subject.model.get_submodule(codec.module)
    except AttributeError:
        return f"codec '{name}': the model has no submodule '{codec.module}'"
    for role in ("encode", "decode"):
        bound = getattr(codec, role)
        if not isinstance(getattr(bound, "__self__", None), type(module)) or getattr(bound, "__name__", "") != role:
            return f"codec '{name}': `{role}` is not the bound method `{codec.module}.{role}` (the fix must rebind it)"
    found = codebook_owner(module, codec.num_codes)
    if found is None:
        return (f"codec '{name}': found no codebook with {codec.num_codes} rows in '{codec.module}' "
                f"(an nn.Embedding or (K, D) tensor named {'/'.join(CODEBOOK_NAMES)})")
    return CodecTarget(name, codec, module, *found)


def codec_targets(subject) -> tuple[list[CodecTarget], list[str]]:
    """(fixable codecs, reasons why the others are not) of a subject."""
    found = [codec_target(subject, name) for name in subject.codecs]
    return [t for t in found if isinstance(t, CodecTarget)], [r for r in found if isinstance(r, str)]


def rebind(subject, target: CodecTarget, **changes) -> Codec:
    """Point the codec's encode/decode at `target.module` (of this subject's model) and store it anew.

    `subject.codecs` is replaced by a new dict, so a subject copy never changes its original's codecs.
    """
    codec = replace(target.codec, encode=target.module.encode, decode=target.module.decode, **changes)
    subject.codecs = {**subject.codecs, target.name: codec}
    target.codec = codec
    return codec


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Run `module` in eval mode and restore every submodule's training flag afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@torch.no_grad()
def survey(target: CodecTarget, max_batches: int = 50, max_latents: int = 50_000) -> tuple[torch.Tensor, torch.Tensor]:
    """(code hit counts (K,), latents (N, D) that reached the quantizer) over the codec's samples."""
    k = target.codec.num_codes
    counts = torch.zeros(k, dtype=torch.long)
    with evaluation_mode(target.module), recorded_latents(target.quantizer) as captured:
        for x in itertools.islice(target.codec.samples, max_batches):
            codes = target.codec.encode(x).reshape(-1).long()
            counts += torch.bincount(codes[(codes >= 0) & (codes < k)], minlength=k)
    latents = torch.cat(captured).float() if captured else torch.zeros(0, target.codebook.shape[1])
    if len(latents) > max_latents:
        latents = latents[torch.randperm(len(latents), generator=torch.Generator().manual_seed(0))[:max_latents]]
    return counts, latents
