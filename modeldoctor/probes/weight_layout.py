"""What the layers of a checkpoint are, from tensor names and shapes alone (no model class).

A state dict names tensors `<module path>.<leaf>`; the leaves and shapes of one module say what it
was: `weight` (out, in) with a `bias` is a Linear, `weight` (out, in/groups, *k) a convolution,
`weight` (n) with `running_mean`/`running_var` a BatchNorm, `weight` (n) alone or with a `bias` a
LayerNorm/RMSNorm, a 2-D `weight` under an embedding-like name an Embedding. `layers()` groups the
tensors into such layers; checks use the kind and fans to know what a layer's initialization and
units are. Everything here is inferred, and says so where a report needs it (`Layer.inferred`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..core.evidence import TensorInfo, Weights

KINDS = ("linear", "conv", "embedding", "norm", "batchnorm", "attention-in-proj", "rnn", "other")
# Names of tables whose rows are looked up, not multiplied: token/position embeddings, VQ codebooks.
EMBEDDING_NAME = re.compile(r"(^|[._])(emb|emb_\w+|embed\w*|embedding\w*|wte|wpe|tok_emb\w*|pos_emb\w*|codebook\w*|lookup)($|[._])",
                            re.IGNORECASE)
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
# Leaves of tensors that modules register as buffers, not parameters: they never train (rotary
# frequencies, masks, ids) or are judged on their own (BatchNorm statistics).
BUFFER_LEAVES = frozenset({
    *BN_STATS, "inv_freq", "cos_cached", "sin_cached", "freqs_cis",
    "position_ids", "token_type_ids", "masked_bias", "_float_tensor", "weight_u", "weight_v", "_u", "_v",
})
RNN_LEAF = re.compile(r"^(weight|bias)_(ih|hh)_l\d+(_reverse)?$")


@dataclass
class Layer:
    """One module of a checkpoint, as inferred from its tensors.

    name: the module path ("encoder.layers.0.linear1"; "" for top-level tensors).
    kind: one of KINDS. tensors: leaf -> full tensor name ("weight" -> "encoder.layers.0.linear1.weight").
    fan_in, fan_out: of its weight, as `torch.nn.init` computes them (0 when it has no such weight).
    """

    name: str
    kind: str
    tensors: dict[str, str] = field(default_factory=dict)
    shape: tuple[int, ...] = ()  # of the main tensor (its weight, or its only tensor)
    fan_in: int = 0
    fan_out: int = 0

    @property
    def weight(self) -> str | None:
        return self.tensors.get("weight")

    @property
    def bias(self) -> str | None:
        return self.tensors.get("bias")

    @property
    def main(self) -> str:
        """The tensor that stands for the layer in tables: its weight, else its first tensor."""
        return self.weight or next(iter(self.tensors.values()))


def split_name(name: str) -> tuple[str, str]:
    """("encoder.fc", "weight") from "encoder.fc.weight"; ("", "scale") from "scale"."""
    module, _, leaf = name.rpartition(".")
    return module, leaf


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) as `torch.nn.init._calculate_fan_in_and_fan_out` computes them."""
    if len(shape) < 2:
        return 0, 0
    receptive = 1
    for size in shape[2:]:
        receptive *= size
    return shape[1] * receptive, shape[0] * receptive


def classify(module: str, leaves: dict[str, TensorInfo]) -> str:
    """The kind of one module from its leaves and their shapes."""
    weight = leaves.get("weight")
    if "in_proj_weight" in leaves:
        return "attention-in-proj"
    if any(RNN_LEAF.match(leaf) for leaf in leaves):
        return "rnn"
    if weight is None:
        return "other"
    if any(stat in leaves for stat in BN_STATS) and len(weight.shape) == 1:
        return "batchnorm"
    if len(weight.shape) == 1:
        return "norm"
    if len(weight.shape) >= 3:
        return "conv"
    if len(weight.shape) == 2:
        if "bias" not in leaves and EMBEDDING_NAME.search(module or weight.name):
            return "embedding"
        return "linear"
    return "other"


def layers(weights: Weights) -> list[Layer]:
    """The checkpoint's tensors grouped into layers, in the order the checkpoint lists them (memoized)."""
    if "layers" in weights.cache:
        return weights.cache["layers"]
    grouped: dict[str, dict[str, TensorInfo]] = {}
    for name in weights.names():
        module, leaf = split_name(name)
        grouped.setdefault(module, {})[leaf] = weights.info(name)
    found = []
    for module, leaves in grouped.items():
        kind = classify(module, leaves)
        main = leaves.get("weight") or leaves.get("in_proj_weight") or next(iter(leaves.values()))
        fan_in, fan_out = fans(main.shape) if kind not in ("norm", "batchnorm", "other") else (0, 0)
        found.append(Layer(module, kind, {leaf: info.name for leaf, info in leaves.items()}, main.shape, fan_in, fan_out))
    weights.cache["layers"] = found
    return found


def layer_of(name: str) -> str:
    """The module path a tensor name belongs to."""
    return split_name(name)[0]


def is_float(info: TensorInfo) -> bool:
    return info.dtype in ("float16", "bfloat16", "float32", "float64") or info.dtype.startswith("float8")
