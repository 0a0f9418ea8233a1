"""How much of a prediction each input modality accounts for: integrated gradients with captum.

`modality_attribution` runs captum's `IntegratedGradients` on the activations of the subject's
embedding layer: a forward hook substitutes the (scaled) embeddings captum passes in for the
layer's output, so any batch layout (dicts, tuples) works. captum stacks the `n_steps` points of
the path along dim 0, so the batch is indexed to match (row i reads example i mod n). Baseline:
zero embeddings. Attribution of token s: the sum over features of its attribution (these sum to
F(x) − F(x′) by completeness); share of modality m: Σ|attr| over its positions / Σ|attr| over all
positions, averaged over the examples.

Scalar output F per example (what is attributed):
- classification and tokens: the mean log-probability of the target over the scored positions
  (`subject.predict` gives logits and targets; `task.ignore_index` positions left out);
- regression: the mean prediction over its positions; a prediction that is not differentiable
  (an argmax, a bin lookup) has nothing to attribute, unless the subject declares
  "attribution_output";
- retrieval: not attributed.

Capabilities (`Subject.capabilities`):
- "embedding_layer": str, qualified name of the module whose output (B, S, d) holds the token
  embeddings aligned with "token_modalities" (the input of the attention stack). Optional;
  enables attribution.
- "token_modalities": see `modeldoctor.attention`; required for shares.
- "attribution_output": callable(model, batch) -> (B,) tensor, the scalar per example to attribute
  instead of the default above. Optional.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..core.subject import Subject

__all__ = ["AttributionUnavailable", "ModalityAttribution", "modality_attribution", "take_rows"]


class AttributionUnavailable(Exception):
    """The subject's prediction cannot be attributed (the message says why)."""


@dataclass
class ModalityAttribution:
    shares: dict[str, float]  # modality -> mean share of Σ|attr|
    token_shares: dict[str, float]  # modality -> share of positions (its fair share)
    relative_delta: float  # Σ|convergence delta| / Σ|F(x) − F(x′)|
    examples: int
    n_steps: int


def take_rows(batch: Any, rows: torch.Tensor, batch_size: int) -> Any:
    """`batch` with every tensor whose first dim is `batch_size` indexed by `rows` (nested dicts, tuples)."""
    if isinstance(batch, torch.Tensor):
        return batch[rows] if batch.dim() and batch.shape[0] == batch_size else batch
    if isinstance(batch, dict):
        return {key: take_rows(value, rows, batch_size) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(take_rows(value, rows, batch_size) for value in batch)
    return batch


def example_scores(subject: Subject, model: nn.Module, batch: Any) -> torch.Tensor:
    """The scalar per example that is attributed (see the module docstring): (N,)."""
    output = subject.capabilities.attribution_output
    if output is not None:
        return output(model, batch).reshape(-1)
    prediction, target = subject.predict(model, batch)
    if torch.is_grad_enabled() and not prediction.requires_grad:  # captum runs some forwards without grad
        raise AttributionUnavailable("the prediction is not differentiable w.r.t. the embeddings (an argmax or lookup?)")
    n = prediction.shape[0]
    if subject.task.is_categorical:
        logits, labels = prediction.float().reshape(n, -1, prediction.shape[-1]), target.reshape(n, -1)  # (N, P, C), (N, P)
        scored = labels != subject.task.ignore_index
        log_p = F.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]  # (N, P)
        return (log_p * scored).sum(1) / scored.sum(1).clamp(min=1)
    return prediction.float().reshape(n, -1).mean(1)


def modality_attribution(
    subject: Subject, model: nn.Module, batch: Any, *, examples: int = 8, n_steps: int = 16
) -> ModalityAttribution:
    """Integrated-gradients share of each declared modality in the first `examples` of `batch`.

    `model` (a copy the caller owns) is put in eval mode. Raises AttributionUnavailable.
    """
    from captum.attr import IntegratedGradients  # imported here: captum is slow to import

    caps = subject.capabilities
    if subject.task.kind == "retrieval":
        raise AttributionUnavailable("retrieval scores are not attributed")
    if not caps.embedding_layer or not caps.token_modalities:
        raise AttributionUnavailable("needs capabilities `embedding_layer` and `token_modalities`")
    try:
        layer = model.get_submodule(caps.embedding_layer)
    except AttributeError as error:
        raise AttributionUnavailable(f"no module {caps.embedding_layer!r} in the model") from error
    model.eval()
    seen: dict[str, Any] = {"calls": 0, "substitute": None}

    def embeddings_hook(module, args, output):
        seen["calls"] += 1
        if seen["substitute"] is None:
            seen["output"] = output
            return None
        return seen["substitute"]

    handle = layer.register_forward_hook(embeddings_hook)
    try:
        with torch.no_grad():
            subject.predict(model, batch)
        embedded = seen.get("output")
        if seen["calls"] != 1 or not isinstance(embedded, torch.Tensor) or embedded.dim() != 3:
            raise AttributionUnavailable(f"`{caps.embedding_layer}` must run once per forward and give (B, S, d); "
                                         f"it ran {seen['calls']} time(s)")
        batch_size = embedded.shape[0]
        n = min(examples, batch_size)
        subset = take_rows(batch, torch.arange(n), batch_size)
        masks = {name: torch.as_tensor(mask).bool() for name, mask in caps.token_modalities(subset).items()}
        positions = embedded.shape[1]
        masks = {name: (mask if mask.dim() == 2 else mask[None].expand(n, -1))[:n] for name, mask in masks.items()
                 if mask.shape[-1] == positions}
        if not masks:
            raise AttributionUnavailable(f"no token_modalities mask covers the {positions} embedded positions")

        def forward(scaled: torch.Tensor) -> torch.Tensor:  # (k·n, S, d) -> (k·n,)
            seen["substitute"], seen["calls"] = scaled, 0
            rows = torch.arange(scaled.shape[0]) % n  # captum stacks the path points along dim 0
            return example_scores(subject, model, take_rows(subset, rows, n))

        with torch.no_grad():
            inputs = embedded[:n].detach().clone()  # (n, S, d)
        attributions, delta = IntegratedGradients(forward).attribute(
            inputs, baselines=torch.zeros_like(inputs), n_steps=n_steps, return_convergence_delta=True)
    finally:
        handle.remove()
    per_token = attributions.detach().sum(-1).abs()  # (n, S)
    total = per_token.sum(1)  # (n,)
    kept = total > 0
    shares = {name: float((per_token * mask).sum(1)[kept].div(total[kept]).mean()) if kept.any() else math.nan
              for name, mask in masks.items()}
    change = (attributions.detach().sum((1, 2)) - delta.detach()).abs().sum()  # Σ|F(x) − F(x′)|
    relative = float(delta.detach().abs().sum() / change) if change > 0 else math.nan
    return ModalityAttribution(shares=shares, token_shares={name: float(mask.double().mean()) for name, mask in masks.items()},
                               relative_delta=relative, examples=n, n_steps=n_steps)
