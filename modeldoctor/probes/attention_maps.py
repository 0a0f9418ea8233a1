"""Capture of attention weights during a forward, and the numbers the `attention` check computes on them.

`capture_attention(model)` is a context manager that records the weights (B, H, L, S) of every
attention computed inside `model` while it is open (B examples, H heads, L queries, S keys),
whatever the implementation:

1. `nn.MultiheadAttention`, also inside `nn.TransformerEncoderLayer` / `nn.TransformerEncoder` in
   eval mode. Their fast paths call a fused kernel that returns no weights and skips hooks, so the
   context turns them off (`torch.backends.mha.set_fastpath_enabled(False)`; the encoder layer's
   sparsity fast path reads the same flag) and wraps each MHA's `forward` to force
   `need_weights=True, average_attn_weights=False`. The caller still gets what it asked for
   (no weights, or weights averaged over heads).
2. `F.scaled_dot_product_attention`, also when imported under another name into the module that
   defines a model class (`from torch.nn.functional import scaled_dot_product_attention as sdpa`):
   matching names in `torch`, `torch.nn.functional` and the globals of every module defining one of
   the model's classes are patched with an explicit softmax(QKᵀ·scale + mask, causal) @ V, the same
   result (to float rounding) with the weights recorded.
3. Attention written by hand, softmax(QKᵀ) through `torch.softmax`, `F.softmax`, `Tensor.softmax`
   or `nn.Softmax`: a softmax output counts as attention when (heuristic) it is taken over the last
   dim of a tensor of 3 or more dims, (B, L, S) or (B, H, L, S); the innermost module running
   (an `nn.Softmax` counts as its parent) is a proper submodule of the model, so the root model's
   own output softmax is never taken; and the key count S ≥ 2 is the size of a non-feature dim
   (every dim but the last of a float tensor, any dim of an integer one) of a tensor given to a
   module that is running, i.e. it is a sequence length the model was fed. A router's softmax over
   experts (2-D, or E experts matching no sequence length) and a classifier's softmax over a
   vocabulary are left out. Keys that come from learned latents alone (Perceiver) are missed:
   declare `attentions` for such models.
4. The subject capability "attentions" (see below): used by `record_attention` instead of capture.

Records are named by the qualified name of the attention module (the innermost module running for
2 and 3; "(model)" for the root; "#2", "#3" for further calls of one module in the same capture)
and normalised to float (B, H, L, S): a 3-D (B, L, S) map becomes one head. Each record also keeps
which keys every query could attend to (`allowed`): keys whose attention logit is -inf, or more than
`MASK_GAP` below the row's largest logit, are masked (padding, causal), as the softmax gives them
exactly 0. Everything patched is restored on exit, also after an exception. Not thread-safe.

Capabilities a Subject can declare for the attention check (`Subject.capabilities`):
- "attentions": callable(model, batch) -> list of (B, H, L, S) (or (B, L, S)) tensors, for models
  that return their attention weights themselves. Optional; used instead of capture.
- "token_modalities": callable(batch) -> dict[str, BoolTensor], modality name -> mask over the
  self-attention key positions, shape (S,) or (B, S). Optional; enables modality shares of
  attention (and, with "embedding_layer", of attribution; see `modeldoctor.attribution`).
- "embedding_layer": str, see `modeldoctor.attribution`.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "MASK_GAP", "AttentionCapture", "AttentionRecord", "LayerStats", "allowed_keys", "capture_attention",
    "modality_mass", "normalized_entropy", "record_attention",
]

MASK_GAP = 1e4  # a key whose logit is this far below its row's largest is masked: exp(-1e4) is 0

# The originals, taken at import time, before any capture patches them.
TORCH_SOFTMAX = torch.softmax
F_SOFTMAX = F.softmax
TENSOR_SOFTMAX = torch.Tensor.softmax
SDPA = F.scaled_dot_product_attention


@dataclass
class AttentionRecord:
    """One attention computation: weights (B, H, L, S) and the keys each query may attend to."""

    name: str
    weights: torch.Tensor  # (B, H, L, S) float
    allowed: torch.Tensor | None  # (B, H, L, S) bool, or None: keys with nonzero weight
    source: str  # "multihead-attention" | "sdpa" | "softmax" | "capability"


def as_bhls(tensor: torch.Tensor) -> torch.Tensor:
    """(L, S) -> (1, 1, L, S); (B, L, S) -> (B, 1, L, S); (B, ..., L, S) -> (B, H, L, S)."""
    if tensor.dim() == 2:
        return tensor[None, None]
    if tensor.dim() == 3:
        return tensor[:, None]
    return tensor.reshape(tensor.shape[0], -1, *tensor.shape[-2:])


def allowed_keys(logits: torch.Tensor) -> torch.Tensor:
    """Bool (..., S): keys not masked out of each row of attention logits (..., S)."""
    finite = torch.isfinite(logits)
    top = logits.masked_fill(~finite, float("-inf")).amax(-1, keepdim=True)
    return finite & (logits >= top - MASK_GAP)


def explicit_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """F.scaled_dot_product_attention computed step by step: (output, weights, logits)."""
    length, keys = query.size(-2), key.size(-2)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa:  # grouped-query attention: each key/value head serves several query heads
        repeat = query.size(-3) // key.size(-3)
        key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
    logits = (query @ key.transpose(-2, -1)) * scale  # (..., L, S)
    if is_causal:
        causal = torch.ones(length, keys, dtype=torch.bool, device=query.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else logits + attn_mask
    weights = TORCH_SOFTMAX(logits, -1).nan_to_num(0.0)  # fully masked rows give 0, as SDPA does
    mixed = torch.dropout(weights, dropout_p, True) if dropout_p > 0 else weights
    return mixed.to(value.dtype) @ value, weights, logits


def sequence_sizes(values: Any, into: set[int], depth: int = 0) -> set[int]:
    """Sizes of the non-feature dims of the tensors in (nested) `values`: candidate key counts."""
    if isinstance(values, torch.Tensor):
        dims = values.shape[:-1] if values.is_floating_point() else values.shape
        into.update(int(size) for size in dims)
    elif isinstance(values, (list, tuple)) and depth < 3:
        for value in values:
            sequence_sizes(value, into, depth + 1)
    elif isinstance(values, dict) and depth < 3:
        for value in values.values():
            sequence_sizes(value, into, depth + 1)
    return into


@dataclass
class AttentionCapture:
    """What `capture_attention` yields: the records, in call order, and the state of the patches."""

    records: list[AttentionRecord] = field(default_factory=list)
    stack: list[tuple[str, nn.Module, set[int]]] = field(default_factory=list)  # modules running
    calls: dict[str, int] = field(default_factory=dict)
    softmax_depth: int = 0  # > 0 inside a patched softmax (F.softmax calls Tensor.softmax)
    mha_depth: int = 0  # > 0 inside a wrapped nn.MultiheadAttention: nested softmax/SDPA not recorded
    mha_allowed: torch.Tensor | None = None  # allowed keys seen by the softmax inside the MHA

    def by_name(self) -> dict[str, AttentionRecord]:
        return {record.name: record for record in self.records}

    def record(self, name: str, weights: torch.Tensor, allowed: torch.Tensor | None, source: str) -> None:
        name = name or "(model)"
        self.calls[name] = count = self.calls.get(name, 0) + 1
        weights = as_bhls(weights.detach().float())
        if allowed is not None:  # same elements as the weights, maybe laid out (B*H, L, S)
            allowed = allowed.detach().reshape(weights.shape) if allowed.numel() == weights.numel() else None
        self.records.append(AttentionRecord(name if count == 1 else f"{name}#{count}", weights, allowed, source))

    def owner(self, proper: bool) -> str | None:
        """Qualified name of the innermost running module (an nn.Softmax counts as its parent)."""
        for name, module, _ in reversed(self.stack):
            if isinstance(module, nn.Softmax):
                continue
            return name if name or not proper else None
        return None if proper else ""

    # --- wrappers ---------------------------------------------------------------------------

    def softmax(self, original: Callable) -> Callable:
        def softmax(input, *args, **kwargs):
            if self.softmax_depth:
                return original(input, *args, **kwargs)
            self.softmax_depth += 1
            try:
                output = original(input, *args, **kwargs)
            finally:
                self.softmax_depth -= 1
            self.softmax_seen(input, output, kwargs.get("dim", args[0] if args else None))
            return output

        return softmax

    def softmax_seen(self, logits: torch.Tensor, weights: torch.Tensor, dim: Any) -> None:
        if not isinstance(dim, int) or not isinstance(logits, torch.Tensor) or logits.dim() < 3 or dim not in (-1, logits.dim() - 1):
            return
        if self.mha_depth:  # the softmax of a wrapped MultiheadAttention: keep its mask only
            self.mha_allowed = allowed_keys(logits.detach())
            return
        name = self.owner(proper=True)
        keys = logits.shape[-1]
        sizes = set().union(*(sizes for _, _, sizes in self.stack)) if self.stack else set()
        if name is not None and keys >= 2 and keys in sizes:
            self.record(name, weights, allowed_keys(logits.detach()), "softmax")

    def sdpa(self, original: Callable) -> Callable:
        def scaled_dot_product_attention(query, key, value, *args, **kwargs):
            if self.mha_depth:
                return original(query, key, value, *args, **kwargs)
            output, weights, logits = explicit_sdpa(query, key, value, *args, **kwargs)
            self.record(self.owner(proper=False), weights, allowed_keys(logits.detach()), "sdpa")
            return output

        return scaled_dot_product_attention

    def multihead(self, name: str, module: nn.MultiheadAttention) -> Callable:
        original = module.forward
        signature = inspect.signature(original)

        def forward(*args, **kwargs):
            arguments = signature.bind(*args, **kwargs)
            arguments.apply_defaults()
            asked = dict(arguments.arguments)
            self.mha_depth += 1
            self.mha_allowed = None
            try:
                output, weights = original(**{**asked, "need_weights": True, "average_attn_weights": False})
            finally:
                self.mha_depth -= 1
            if weights is None:  # an override that ignores need_weights: nothing to record
                return output, None
            # weights (B, H, L, S), or (H, L, S) for an unbatched input
            self.record(name, weights if weights.dim() == 4 else weights[None], self.mha_allowed, "multihead-attention")
            if not asked.get("need_weights", True):
                return output, None
            return output, weights.mean(dim=-3) if asked.get("average_attn_weights", True) else weights

        return forward


def patch(undo: contextlib.ExitStack, owner: Any, attribute: str, value: Any) -> None:
    """setattr(owner, attribute, value) until `undo` closes (deleted again if it was inherited)."""
    had = attribute in vars(owner)
    old = vars(owner).get(attribute)
    setattr(owner, attribute, value)
    undo.callback(lambda: setattr(owner, attribute, old) if had else delattr(owner, attribute))


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[AttentionCapture]:
    """Record every attention computed inside `model` while open; restores everything on exit."""
    capture = AttentionCapture()
    with contextlib.ExitStack() as undo:
        undo.callback(torch.backends.mha.set_fastpath_enabled, torch.backends.mha.get_fastpath_enabled())
        torch.backends.mha.set_fastpath_enabled(False)
        for name, module in model.named_modules():
            # A stack of running modules: which one a softmax or an SDPA call belongs to.
            def push(module, args, kwargs, name=name):
                capture.stack.append((name, module, sequence_sizes([args, kwargs], set())))

            def pop(module, args, output):
                for i in range(len(capture.stack) - 1, -1, -1):
                    if capture.stack[i][1] is module:
                        del capture.stack[i]
                        break

            undo.callback(module.register_forward_pre_hook(push, with_kwargs=True).remove)
            undo.callback(module.register_forward_hook(pop, always_call=True).remove)
            if isinstance(module, nn.MultiheadAttention) and {"need_weights", "average_attn_weights"} <= set(
                    inspect.signature(module.forward).parameters):  # a subclass with another signature: seen by 2 or 3
                patch(undo, module, "forward", capture.multihead(name, module))
        wrappers = {id(TORCH_SOFTMAX): capture.softmax(TORCH_SOFTMAX), id(F_SOFTMAX): capture.softmax(F_SOFTMAX),
                    id(SDPA): capture.sdpa(SDPA)}
        originals = {id(TORCH_SOFTMAX): TORCH_SOFTMAX, id(F_SOFTMAX): F_SOFTMAX, id(SDPA): SDPA}
        namespaces = {torch, F} | {sys.modules.get(cls.__module__) for module in model.modules() for cls in type(module).__mro__}
        for namespace in namespaces - {None, sys.modules["builtins"]}:
            for attribute, value in list(vars(namespace).items()):
                if id(value) in originals and value is originals[id(value)]:
                    patch(undo, namespace, attribute, wrappers[id(value)])
        patch(undo, torch.Tensor, "softmax", capture.softmax(TENSOR_SOFTMAX))
        yield capture


def record_attention(
    model: nn.Module, batch: Any, run: Callable[[nn.Module, Any], Any], attentions: Callable | None = None
) -> list[AttentionRecord]:
    """Attention records of one forward `run(model, batch)`, model in eval mode, without grad.

    attentions: the subject's "attentions" capability, used instead of capture when given.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if attentions is not None:
                return [AttentionRecord(f"attentions[{i}]", as_bhls(w.detach().float()), None, "capability")
                        for i, w in enumerate(attentions(model, batch))]
            with capture_attention(model) as capture:
                run(model, batch)
            return capture.records
    finally:
        model.train(was_training)


# --- numbers ------------------------------------------------------------------------------------


def normalized_entropy(weights: torch.Tensor, allowed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy (B, H, L), valid (B, H, L)): H/log(n) per query, n = keys it may attend to.

    weights (B, H, L, S); allowed (B, H, L, S) bool, or None for "keys with nonzero weight".
    Queries with fewer than two allowed keys have no entropy to speak of and are not valid.
    """
    allowed = weights > 0 if allowed is None else allowed
    p = (weights.double().clamp(min=0) * allowed).clamp(min=0)
    entropy = -torch.special.xlogy(p, p).sum(-1)  # (B, H, L); 0·log 0 = 0
    count = allowed.sum(-1)  # (B, H, L)
    valid = count >= 2
    return entropy / torch.log(count.clamp(min=2).double()), valid


def modality_mass(weights: torch.Tensor, allowed: torch.Tensor | None, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mass, fair, valid), each (B, H, L): attention on the keys in `keys` ((S,) or (B, S) bool),
    and the share of the query's allowed keys that they make up (its fair share)."""
    allowed = weights > 0 if allowed is None else allowed
    keys = keys.reshape(-1, 1, 1, keys.shape[-1]).to(weights.device)  # (B or 1, 1, 1, S)
    mass = (weights.double() * keys).sum(-1)
    count = allowed.sum(-1)
    fair = (allowed & keys).sum(-1).double() / count.clamp(min=1)
    return mass, fair, count >= 1


@dataclass
class LayerStats:
    """Running sums over batches for one attention layer (records of one name)."""

    name: str
    source: str
    entropy_sum: torch.Tensor | None = None  # (H,)
    entropy_count: torch.Tensor | None = None  # (H,)
    map_sum: torch.Tensor | None = None  # (H, L, S): attention summed over examples
    map_count: int = 0
    modality: dict[str, list[float]] = field(default_factory=dict)  # name -> [mass, fair, queries]

    def add(self, record: AttentionRecord, modalities: dict[str, torch.Tensor] | None = None) -> None:
        weights = record.weights  # (B, H, L, S)
        entropy, valid = normalized_entropy(weights, record.allowed)
        sums, counts = (entropy * valid).sum((0, 2)), valid.sum((0, 2)).double()  # (H,)
        if self.entropy_sum is None or self.entropy_sum.shape != sums.shape:
            self.entropy_sum, self.entropy_count = torch.zeros_like(sums), torch.zeros_like(counts)
        self.entropy_sum += sums
        self.entropy_count += counts
        if self.map_sum is None:
            self.map_sum = torch.zeros(weights.shape[1:], dtype=torch.double)
        if self.map_sum.shape == weights.shape[1:]:  # variable-length batches: maps of the first shape
            self.map_sum += weights.double().sum(0)
            self.map_count += weights.shape[0]
        for modality, keys in (modalities or {}).items():
            if keys.shape[-1] != weights.shape[-1] or (keys.dim() == 2 and keys.shape[0] not in (1, weights.shape[0])):
                continue  # a mask over other positions (e.g. a cross-attention's keys)
            mass, fair, rows = modality_mass(weights, record.allowed, keys.bool())
            total = self.modality.setdefault(modality, [0.0, 0.0, 0.0])
            total[0] += float((mass * rows).sum())
            total[1] += float((fair * rows).sum())
            total[2] += float(rows.sum())

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, L, S) of the mean map."""
        return tuple(self.map_sum.shape) if self.map_sum is not None else (0, 0, 0)

    def head_entropy(self) -> list[float]:
        """Normalized entropy per head (NaN for a head without valid queries)."""
        return [float(s / c) if c else math.nan for s, c in zip(self.entropy_sum, self.entropy_count)]

    def mean_map(self) -> torch.Tensor:  # (H, L, S)
        return self.map_sum / max(self.map_count, 1)

    def shares(self) -> dict[str, tuple[float, float]]:
        """Modality -> (attention share, fair share), means over queries, heads and examples."""
        return {m: (mass / n, fair / n) for m, (mass, fair, n) in self.modality.items() if n}
