"""Dead units of a checkpoint, from its weights alone: the survey the dead-units check and the reinit fix share.

A unit is an output row of a Linear weight (out, in) or a filter of a convolution (out, in/groups, *k),
or a channel of a normalization layer's scale γ. It is dead when
- its incoming row is ~0 (L2 norm at most `rel_threshold` × the median norm of the layer's nonzero rows,
  so exact zeros always count): its output is its bias alone, whatever the input ("zero row");
- its scale γ is ~0 (|γ| at most `rel_threshold` × the layer's median |γ|): the channel outputs its
  bias β alone ("zero scale");
- its incoming row AND its outgoing column in the layer that consumes its outputs are both small
  (each at most `pair_threshold` × its layer's median): what a ReLU unit that stopped firing looks like
  after weight decay has shrunk both sides ("faded pair").

The consumer is inferred, never known: the next weight layer in checkpoint order, inside the same
parent module, whose input width (shape[1]) is this layer's output width, with only BatchNorms
(per-channel, so they do not mix units) between them. A LayerNorm/RMSNorm in between mixes the units
(it normalizes over them) and ends the search, as do embeddings, attention and RNN layers; a candidate
named like a query/key/value projection, a router/gate or a shortcut reads the block's input, not this
layer's output, and is rejected. Layers writing to a residual stream (their outputs have several
consumers) fall outside the parent-module rule, so they get no consumer. A 2-D weight stored transposed,
(in, out) with a bias of shape[1] entries (Hugging Face's Conv1D in GPT-2), has inputs for rows: it is
not surveyed, and is no consumer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..core.evidence import Weights
from .weight_layout import Layer, is_float, layers, split_name
from .weight_stats import tensor_stats

UNIT_KINDS = ("linear", "conv", "norm", "batchnorm")  # the layer kinds whose units are surveyed
REL_THRESHOLD = 1e-3  # a row or scale below this × its layer's median is ~0
PAIR_THRESHOLD = 0.05  # incoming and outgoing both below this × their medians: a faded unit
CENTRED_SCALES = 0.2  # norm scales at least this often negative are centred on 0 (an offset (1 + γ) parameterization)
READS_BLOCK_INPUT = re.compile(
    r"(^|[._])(q|k|v|query|key|value|w_?[qkv]|[qkv]_?proj|[qkv]_lin|to_[qkv]|qkv|wqkv|c_attn|"
    r"router\w*|gate|gating|w_gate|switch|downsample|shortcut|skip\w*|residual\w*)($|[._])", re.IGNORECASE)


@dataclass
class LayerUnits:
    """The dead units of one layer.

    tensor: the weight tensor whose rows (or entries, for a norm) are the units; kind: linear | conv | norm.
    zero: units with a ~0 incoming row or scale; faded: units whose incoming row and outgoing column are
    both small (not in `zero`); consumer: the weight tensor inferred to read this layer's outputs.
    skipped: why the layer was not judged (then no units are dead).
    """

    layer: str
    tensor: str
    kind: str
    units: int
    bias: str | None = None
    consumer: str | None = None
    running: list[str] = field(default_factory=list)
    zero: list[int] = field(default_factory=list)
    faded: list[int] = field(default_factory=list)
    skipped: str | None = None

    @property
    def dead(self) -> list[int]:
        return sorted({*self.zero, *self.faded})

    @property
    def share(self) -> float:
        return len(self.dead) / self.units if self.units else 0.0

    @property
    def revivable(self) -> bool:
        """Whether reinit-dead-units can revive them: a norm scale, or a layer with an inferred consumer."""
        return bool(self.dead) and (self.kind == "norm" or self.consumer is not None)


def small(norms: torch.Tensor, rel: float) -> torch.Tensor:
    """(n,) bool: norms at most `rel` × the median of the nonzero norms (all of them when every norm is 0)."""
    nonzero = norms[norms > 0]
    if not len(nonzero):
        return torch.ones_like(norms, dtype=torch.bool)
    return norms <= rel * nonzero.median()


def input_norms(weights: Weights, name: str) -> torch.Tensor:
    """(shape[1],) L2 norm of each input column (over outputs and kernel taps); memoized."""
    cache = weights.cache.setdefault("input_norms", {})
    if name not in cache:
        stats = tensor_stats(weights, name)
        if stats.col_norms is not None:
            cache[name] = stats.col_norms
        else:  # a convolution (out, in/groups, *k): weight_stats keeps column norms for 2-D tensors only
            w = weights.tensor(name).detach()
            cache[name] = w.transpose(0, 1).reshape(w.shape[1], -1).float().nan_to_num(0.0).norm(dim=1)
    return cache[name]


def transposed(weights: Weights, layer: Layer) -> bool:
    """A 2-D weight stored (in, out), as Hugging Face's Conv1D (GPT-2) keeps it: its bias has shape[1] entries."""
    if layer.kind != "linear" or not layer.bias or layer.shape[0] == layer.shape[1]:
        return False
    return weights.info(layer.bias).shape == layer.shape[1:]


def consumer_of(weights: Weights, found: list[Layer], index: int) -> tuple[Layer | None, list[Layer]]:
    """(the layer inferred to read the outputs of `found[index]` or None, the BatchNorms between them)."""
    producer = found[index]
    parent = split_name(producer.name)[0]
    between: list[Layer] = []
    for candidate in found[index + 1:]:
        if candidate.kind == "batchnorm" and candidate.shape == producer.shape[:1]:
            between.append(candidate)  # per-channel: it rescales each unit alone
            continue
        if candidate.kind == "other" and len(candidate.shape) <= 1:
            continue  # a bare scalar or vector (a gain, a buffer) between the two
        if candidate.kind not in ("linear", "conv") or split_name(candidate.name)[0] != parent:
            return None, []
        if candidate.shape[1] != producer.shape[0] or READS_BLOCK_INPUT.search(split_name(candidate.name)[1]):
            return None, []
        if transposed(weights, candidate):
            return None, []
        return candidate, between
    return None, []


def survey(weights: Weights, rel_threshold: float = REL_THRESHOLD, pair_threshold: float = PAIR_THRESHOLD) -> list[LayerUnits]:
    """The units of every linear, conv and norm layer, with the dead ones (memoized per thresholds)."""
    key = ("unit_survey", rel_threshold, pair_threshold)
    if key in weights.cache:
        return weights.cache[key]
    found, out = layers(weights), []
    for index, layer in enumerate(found):
        if layer.kind not in UNIT_KINDS or not layer.weight:
            continue
        if not is_float(weights.info(layer.weight)):
            continue
        if layer.kind in ("norm", "batchnorm"):
            out.append(norm_units(weights, layer, rel_threshold))
        else:
            consumer, between = consumer_of(weights, found, index)
            units = weight_units(weights, layer, consumer, rel_threshold, pair_threshold)
            units.running = [norm.tensors[leaf] for norm in between for leaf in ("running_mean", "running_var")
                             if leaf in norm.tensors]
            out.append(units)
    weights.cache[key] = out
    return out


def norm_units(weights: Weights, layer: Layer, rel: float) -> LayerUnits:
    scale = weights.tensor(layer.weight).detach().float()  # (n,)
    units = LayerUnits(layer.name, layer.weight, "norm", scale.numel(), layer.bias)
    if not bool(torch.isfinite(scale).all()):
        units.skipped = "holds non-finite values (see non-finite)"
    elif (scale < 0).float().mean() >= CENTRED_SCALES:
        units.skipped = "its scales are centred on 0 (an offset parameterization, output × (1 + γ)?)"
    else:
        units.zero = torch.nonzero(small(scale.abs(), rel)).flatten().tolist()
    return units


def weight_units(weights: Weights, layer: Layer, consumer: Layer | None, rel: float, pair: float) -> LayerUnits:
    stats = tensor_stats(weights, layer.weight)
    units = LayerUnits(layer.name, layer.weight, layer.kind, layer.shape[0], layer.bias,
                       consumer.weight if consumer else None)
    if stats.nonfinite:
        units.skipped = "holds non-finite values (see non-finite)"
        return units
    if transposed(weights, layer):  # its rows are inputs, not units
        units.skipped = "stored transposed, (in, out), as Hugging Face's Conv1D"
        units.consumer = None
        return units
    rows = stats.row_norms  # (out,)
    zero = small(rows, rel)
    units.zero = torch.nonzero(zero).flatten().tolist()
    if consumer is not None and not tensor_stats(weights, consumer.weight).nonfinite:
        cols = input_norms(weights, consumer.weight)  # (out,) the consumer's column per unit
        faded = small(rows, pair) & small(cols, pair) & ~zero
        units.faded = torch.nonzero(faded).flatten().tolist()
    return units
