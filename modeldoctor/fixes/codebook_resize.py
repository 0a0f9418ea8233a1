"""codebook-resize: grow VQ codebooks ×16 (the seed's 512 → 8192) with the vocabularies that depend on them."""
from __future__ import annotations

import torch
from torch import nn

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Subject
from ..probes.codebooks import CodecTarget, codec_targets, rebind, survey

FACTOR = 16  # the seed: VectorQuantizer(num_embeddings=512) -> 8192
NOISE = 0.1  # new codes: a live code plus this × the live codes' per-dimension std


def resize_factor(subject: Subject, name: str) -> int:
    """`capabilities.codebook_resize_factor`: an int for every codec or {codec: int}; default 16."""
    factor = subject.capabilities.codebook_resize_factor or FACTOR
    return int(factor.get(name, FACTOR) if isinstance(factor, dict) else factor)


def dependents(subject: Subject, name: str) -> list[str]:
    """Qualified names of modules whose vocabulary is codec `name`'s K (`capabilities.codebook_dependents`)."""
    return list((subject.capabilities.codebook_dependents or {}).get(name, []))


def dependent_problem(subject: Subject, qualified: str, k: int) -> str | None:
    try:
        module = subject.model.get_submodule(qualified)
    except AttributeError:
        return f"the model has no dependent module '{qualified}'"
    if isinstance(module, nn.Embedding):
        sizes = (module.num_embeddings,)
    else:
        sizes = (module.in_features, module.out_features) if isinstance(module, nn.Linear) else ()
    if k not in sizes:
        return f"dependent '{qualified}' is not an nn.Embedding/nn.Linear with a dimension of {k}"
    return None


def grown_rows(old: torch.Tensor, extra: int, generator: torch.Generator) -> torch.Tensor:
    """`old` (K, ...) with `extra` rows appended: the mean row plus 1% of the rows' std as noise."""
    spread = old.std(0).nan_to_num(0.0) if len(old) > 1 else torch.zeros_like(old[0])
    new = old.mean(0) + torch.randn((extra, *old.shape[1:]), generator=generator) * spread * 0.01
    return torch.cat([old, new.to(old.dtype)])


@torch.no_grad()
def grow_dependent(model: nn.Module, qualified: str, k: int, new_k: int, generator: torch.Generator) -> None:
    """Replace an nn.Embedding (K, D) or nn.Linear with K inputs or outputs by a bigger one, keeping old rows."""
    parent_name, _, attribute = qualified.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attribute)
    if isinstance(old, nn.Embedding):
        new = nn.Embedding(new_k, old.embedding_dim, padding_idx=old.padding_idx).to(old.weight)
        new.weight.copy_(grown_rows(old.weight, new_k - k, generator))
    else:
        grow_out, grow_in = old.out_features == k, old.in_features == k
        new = nn.Linear(new_k if grow_in else old.in_features, new_k if grow_out else old.out_features,
                        bias=old.bias is not None).to(old.weight)
        weight = grown_rows(old.weight, new_k - k, generator) if grow_out else old.weight  # new logits: mean row
        if grow_in:  # new inputs start with zero weight, so old inputs give the same outputs
            weight = torch.cat([weight, weight.new_zeros(len(weight), new_k - k)], dim=1)
        new.weight.copy_(weight)
        if old.bias is not None:
            new.bias.copy_(grown_rows(old.bias.unsqueeze(1), new_k - k, generator).squeeze(1) if grow_out else old.bias)
    setattr(parent, attribute, new)


@torch.no_grad()
def grow_codebook(target: CodecTarget, new_k: int, generator: torch.Generator) -> None:
    """Append new codes split from live ones (drawn by use), and grow the per-code buffers alike."""
    q, k = target.quantizer, target.codec.num_codes
    counts, _ = survey(target)
    old = target.codebook.detach()  # (K, D)
    live = old[counts > 0] if (counts > 0).sum() > 1 else old
    weights = counts.double() if counts.sum() else torch.ones(k, dtype=torch.double)
    rows = torch.multinomial(weights, new_k - k, replacement=True, generator=generator)
    noise = torch.randn(len(rows), old.shape[1], generator=generator) * live.std(0).nan_to_num(0.0) * NOISE
    codebook = torch.cat([old, old[rows] + noise.to(old.dtype)])  # (K', D)
    value = getattr(q, target.attribute)
    if isinstance(value, nn.Embedding):
        grown = nn.Embedding(new_k, old.shape[1], padding_idx=value.padding_idx).to(old)
        grown.weight.copy_(codebook)
        setattr(q, target.attribute, grown)
    elif isinstance(value, nn.Parameter):
        setattr(q, target.attribute, nn.Parameter(codebook, requires_grad=value.requires_grad))
    else:
        q.register_buffer(target.attribute, codebook)
    for buffer in getattr(q, "per_code_buffers", ()):
        per_code = getattr(q, buffer)
        if isinstance(per_code, torch.Tensor) and len(per_code) == k:
            q.register_buffer(buffer, torch.cat([per_code, per_code[rows]]), persistent=buffer not in q._non_persistent_buffers_set)
    for owner in {id(q): q, id(target.module): target.module}.values():
        if getattr(owner, "num_codes", None) == k:
            owner.num_codes = new_k


@register_fix
class CodebookResize(Fix):
    """Codebook resize: multiply the number of VQ codes by 16 (512 → 8192) and grow what depends on K.

    What it changes
    For every codec that follows the codebook protocol (see `modeldoctor.vq`), the codebook
    grows from K to 16·K codes (per subject: `capabilities.codebook_resize_factor`, an int or
    {codec: int}). The old codes keep their rows and ids; each new code is a live code, drawn in
    proportion to its use over the codec's samples, plus noise of 10% of the codes' spread
    (codebook splitting, Linde-Buzo-Gray). Buffers listed in the quantizer's `per_code_buffers`
    grow alike, and `num_codes` attributes and `Codec.num_codes` are updated. The modules listed
    in `capabilities.codebook_dependents[codec]` (the seed's `vocab_sizes`: nn.Embedding with
    K rows, nn.Linear with K outputs or inputs) grow too, keeping their rows: new embedding and
    logit rows start at the mean of the old ones, new input columns at zero. State-dict keys keep
    their names but change shape; a patched checkpoint replays the fix before loading weights.
    The new codes and rows are untrained copies until the model is retrained.
    The fix applies only to codecs listed in `capabilities.codebook_dependents` (an empty list
    when nothing reads the codes): growing K while a layer still expects K codes would index past it.

    Why
    A codebook too small for the data's variety caps the fidelity of every token; the seed moved
    its spectrum and light-curve tokenizers from 512 to 8192 codes ("Larger Codebook for
    VectorQuantizer": "Larger codebook = more expressive") and had to update the vocabulary sizes
    of the transformer with them ("Don't forget to update `vocab_sizes`"). On a collapsed
    codebook, resizing alone only adds unused codes: apply codebook-reset as well.
    """

    slug = "codebook-resize"
    kind = "surgery"
    needs_retraining = True
    seed = "000"

    def applicable(self, subject: Subject) -> str | None:
        targets, reasons = codec_targets(subject)
        if not targets:
            return "; ".join(reasons) if reasons else "the subject declares no codecs (capability `codecs`)"
        declared = subject.capabilities.codebook_dependents
        for target in targets:
            if declared is None or target.name not in declared:
                # Growing K without growing what reads the codes would index past those layers.
                return (f"codec '{target.name}': declare what depends on its codebook size in "
                        f"capabilities.codebook_dependents (an empty list if nothing does)")
            if resize_factor(subject, target.name) < 2:
                return f"codec '{target.name}': codebook_resize_factor must be an integer ≥ 2"
            for qualified in dependents(subject, target.name):
                problem = dependent_problem(subject, qualified, target.codec.num_codes)
                if problem:
                    return f"codec '{target.name}': {problem}"
        return None

    def apply(self, subject: Subject) -> None:
        generator = torch.Generator().manual_seed(0)
        for target in codec_targets(subject)[0]:
            rebind(subject, target)  # encode/decode must run on this copy's module
            k = target.codec.num_codes
            new_k = k * resize_factor(subject, target.name)
            grow_codebook(target, new_k, generator)
            for qualified in dependents(subject, target.name):
                grow_dependent(subject.model, qualified, k, new_k, generator)
            rebind(subject, target, num_codes=new_k)
