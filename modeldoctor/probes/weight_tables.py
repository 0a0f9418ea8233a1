"""Lookup tables and MoE routers in a checkpoint, from names and shapes alone, and how collapsed they are.

- Tables: embedding layers (`weight_layout` kind "embedding": token and position embeddings, VQ
  codebooks held in an nn.Embedding such as `modeldoctor.nn.VectorQuantizer.embedding`) and raw
  tensors named like a table (`codebook`, `embed`, `pos_embed`, ...: vector-quantize-pytorch keeps
  `_codebook.embed` as (1, K, D) or (heads, K, D)).
- Routers: the 2-D weight of a module named like an MoE gate (`gate`, `router`, `router.classifier`,
  `gate.wg`, ...) or a raw `w_gate`; never the `gate_proj`/`gate_up_proj` of a gated MLP, never a
  tensor inside the experts. The expert count E is its small dimension, checked against the sibling
  expert tensors (`experts.<i>.…`, `experts.expert_<i>.…`, fused `experts.<name>` of shape (E, …)).

`near_duplicates` clusters rows greedily by cosine (chunked matmul, bounded memory) and
`simulate_routing` routes isotropic inputs through a gate without drawing them in d dimensions.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from ..core.evidence import Weights
from .weight_layout import is_float, layers, split_name

TABLE_LEAF = re.compile(r"^(codebooks?|embed|embeddings?|pos_embed(ding)?s?|positional_embeddings?|position_embeddings?|"
                        r"wpe|wte)$", re.IGNORECASE)
CODEBOOK_NAME = re.compile(r"codebook|quantiz|(^|[._])vq|(^|[._])codes?($|[._])", re.IGNORECASE)
ROUTER_MODULE = re.compile(r"(^|\.)(gate|router|gating|moe_gate|wg)(\.(classifier|layer|linear|proj|wg))?$")
ROUTER_LEAF = re.compile(r"^(w_gate|gate_weight|router_weight|wg|gate|router)$")  # raw parameters (d, E) or (E, d)
EXPERT_PART = re.compile(r"^(experts?|local_experts|deepspeed_experts|expert_\d+)$")
EXPERT_INDEX = re.compile(r"^(?:(.*?)\.)?(?:experts|local_experts|deepspeed_experts)\.(?:expert_)?(\d+)\.")
FUSED_EXPERTS = re.compile(r"^(.*)\.experts\.[^.]+$")  # experts.gate_up_proj (E, d, 2h): one tensor for all
MAX_HEADS = 16  # a 3-D table (H, K, D) is H separate tables when H is at most this
MAX_EXPERTS = 512
CHUNK_ROWS = 1024


@dataclass
class Table:
    name: str  # the tensor
    head: int | None  # the slice of a (H, K, D) tensor, else None
    rows: int
    dim: int
    codebook: bool  # named like a VQ codebook (codebook-reset applies)

    @property
    def label(self) -> str:
        return self.name if self.head is None else f"{self.name}[{self.head}]"


@dataclass
class Gate:
    name: str  # the weight tensor
    experts: int  # E
    dim: int  # d
    transposed: bool  # stored (d, E)
    bias: str | None  # the tensor of its bias (E,), if any
    siblings: int | None  # the expert count read from sibling expert tensors, when there are any


def find_tables(weights: Weights) -> list[Table]:
    """The embedding layers and table-named raw tensors of a checkpoint, one Table per (head of a) table."""
    found, seen = [], set()
    for layer in layers(weights):
        if layer.kind == "embedding" and layer.weight and is_float(weights.info(layer.weight)):
            found.append(Table(layer.weight, None, *layer.shape, bool(CODEBOOK_NAME.search(layer.weight))))
            seen.add(layer.weight)
    for name in weights.names():
        info = weights.info(name)
        if name in seen or not TABLE_LEAF.match(split_name(name)[1]) or not is_float(info):
            continue
        if len(info.shape) == 2:
            found.append(Table(name, None, *info.shape, bool(CODEBOOK_NAME.search(name))))
        elif len(info.shape) == 3 and info.shape[0] <= MAX_HEADS:
            heads = [None] if info.shape[0] == 1 else range(info.shape[0])
            found.extend(Table(name, head, *info.shape[1:], bool(CODEBOOK_NAME.search(name))) for head in heads)
    return found


def table_rows(weights: Weights, table: Table) -> torch.Tensor:
    """The table's rows (K, D) (a view where the tensor allows it; not converted)."""
    tensor = weights.tensor(table.name)
    return tensor.reshape(tensor.shape[-2:]) if table.head is None else tensor[table.head]


def expert_counts(weights: Weights) -> dict[str, int]:
    """Module holding an expert collection -> its number of experts, from the tensor names."""
    indices: dict[str, set[int]] = {}
    fused: dict[str, int] = {}
    for name in weights.names():
        if match := EXPERT_INDEX.match(name):
            indices.setdefault((match.group(1) or "").removesuffix(".experts"), set()).add(int(match.group(2)))
        elif (match := FUSED_EXPERTS.match(name)) and len(weights.info(name).shape) >= 3:
            fused[match.group(1)] = weights.info(name).shape[0]
    return {**fused, **{owner: len(found) for owner, found in indices.items()}}


def find_gates(weights: Weights) -> list[Gate]:
    """The MoE router weights of a checkpoint (see the module docstring)."""
    counts = expert_counts(weights)
    gates = []
    for name in weights.names():
        info = weights.info(name)
        module, leaf = split_name(name)
        parts = name.split(".")
        if len(info.shape) != 2 or not is_float(info) or any(EXPERT_PART.match(part) for part in parts[:-1]):
            continue
        raw = bool(ROUTER_LEAF.match(leaf))
        if not (raw or (leaf == "weight" and ROUTER_MODULE.search(module))):
            continue
        owners = [".".join(parts[:end]) for end in range(len(parts) - 1, max(len(parts) - 5, 0) - 1, -1)]  # up 3 levels
        siblings = next((counts[owner] for owner in owners if owner in counts), None)
        rows, cols = info.shape
        if siblings is not None:
            if siblings not in (rows, cols):
                continue  # named like a gate, but its shape does not match the experts beside it
            transposed = rows != siblings
        elif raw:
            transposed = cols < rows
        elif rows < cols:
            transposed = False
        else:
            continue  # an nn.Linear gate is (E, d) with E < d unless sibling experts say otherwise
        experts, dim = (cols, rows) if transposed else (rows, cols)
        if not 2 <= experts <= MAX_EXPERTS:
            continue
        bias = f"{module}.bias" if not raw and f"{module}.bias" in weights.names() else None
        if bias and weights.info(bias).shape != (experts,):
            bias = None
        gates.append(Gate(name, experts, dim, transposed, bias, siblings))
    return gates


def gate_weight(weights: Weights, gate: Gate) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (E, d), b (E,)) in float64; b is zero for a gate without bias."""
    weight = weights.tensor(gate.name).double()
    weight = weight.T if gate.transposed else weight
    bias = weights.tensor(gate.bias).double() if gate.bias else torch.zeros(gate.experts, dtype=torch.float64)
    return weight.nan_to_num(0.0), bias.nan_to_num(0.0)


def near_duplicates(rows: torch.Tensor, cosine: float, norm_tolerance: float) -> dict:
    """Greedy clustering of rows (n, D), none of them zero: rows are near-duplicates when their cosine
    exceeds `cosine` and their norms differ by at most `norm_tolerance` (relative). The first row not
    yet clustered starts a cluster and takes every near-duplicate not yet clustered.

    Returns {"clusters", "duplicate_pairs", "rows_with_duplicate", "max_cosine"}.
    """
    n = len(rows)
    rows = rows.float()
    norms = rows.norm(dim=1)  # (n,)
    unit = rows / norms[:, None]  # (n, D)
    adjacency = torch.zeros(n, n, dtype=torch.bool)  # n ≤ a few thousand: a few MB
    max_cosine = -1.0
    for start in range(0, n, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n)
        sim = unit[start:stop] @ unit.T  # (c, n)
        sim[torch.arange(stop - start), torch.arange(start, stop)] = -2.0  # not its own duplicate
        max_cosine = max(max_cosine, float(sim.max()))
        i, j = torch.nonzero(sim > cosine, as_tuple=True)  # candidate pairs: few unless the table collapsed
        a, b = norms[start + i], norms[j]
        keep = torch.minimum(a, b) >= (1.0 - norm_tolerance) * torch.maximum(a, b)
        adjacency[start + i[keep], j[keep]] = True
    links = adjacency.numpy()
    linked = links.any(1)  # (n,) rows with a near-duplicate
    clustered = ~linked  # a row without a near-duplicate is a cluster of its own
    clusters = int(clustered.sum())
    for i in np.flatnonzero(linked):
        if not clustered[i]:
            clusters += 1
            clustered |= links[i]
            clustered[i] = True
    return {"clusters": clusters, "duplicate_pairs": int(links.sum()) // 2, "rows_with_duplicate": int(linked.sum()),
            "max_cosine": min(max_cosine, 1.0) if n > 1 else math.nan}


def chance_clusters(rows: torch.Tensor, cosine: float, norm_tolerance: float, seed: int, basis: int = 256) -> int:
    """Clusters among as many rows drawn from a Gaussian with the same mean and covariance as `rows` (n, D).

    What chance gives a table of this shape: random rows in a few dimensions, or in a narrow cone
    far from the origin (a codebook fitted to data with a large offset), are often within 8° of
    each other; clumps of rows on a few vectors are not chance. The covariance is that of up to
    `basis` of the rows (the Gaussian rows are random combinations of them).
    """
    generator = torch.Generator().manual_seed(seed)
    rows = rows.float()
    mean = rows.mean(0)  # (D,)
    centred = (rows - mean)[torch.randperm(len(rows), generator=generator)[:basis]]  # (m, D)
    gaussian = mean + torch.randn(len(rows), len(centred), generator=generator) @ centred / math.sqrt(len(centred))  # (n, D)
    return near_duplicates(gaussian[gaussian.norm(dim=1) > 0], cosine, norm_tolerance)["clusters"]


def relative_spread(rows: torch.Tensor) -> float:
    """rms distance of rows (n, D) to their mean row over their rms norm: 1 around the origin, 0 for one point."""
    if not len(rows):
        return 0.0
    centred = rows - rows.mean(0)
    return float(centred.square().sum(1).mean().sqrt() / rows.square().sum(1).mean().sqrt().clamp_min(1e-30))


def simulate_routing(weight: torch.Tensor, bias: torch.Tensor, draws: int, seed: int) -> dict:
    """Route `draws` inputs x ~ N(0, I_d) through logits = x Wᵀ + b (W (E, d), b (E,)).

    The logits are N(b, W Wᵀ), so they are drawn in E dimensions (W Wᵀ = L Lᵀ by eigendecomposition)
    and exactly distributed as those of d-dimensional inputs. Returns the top-1 and top-2 shares per
    expert and the router z-loss mean(logsumexp(logits)²).
    """
    experts = weight.shape[0]
    values, vectors = torch.linalg.eigh(weight @ weight.T)  # (E,), (E, E)
    root = (vectors * values.clamp_min(0.0).sqrt()).float()  # (E, E): root rootᵀ = W Wᵀ
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(draws, experts, generator=generator) @ root.T + bias.float()  # (draws, E)
    top = logits.topk(min(2, experts), dim=-1).indices  # (draws, k)
    top1 = torch.bincount(top[:, 0], minlength=experts).double() / draws  # (E,)
    top2 = torch.bincount(top.reshape(-1), minlength=experts).double() / top.numel()  # (E,)
    return {"top1": top1.tolist(), "top2": top2.tolist(), "z_loss": float(logits.logsumexp(-1).square().mean())}


def share_summary(shares: list[float]) -> dict:
    """max share, normalized entropy H/log E, and `coverage`: the fewest experts carrying 90% of the traffic, over E."""
    p = np.asarray(shares, dtype=np.float64)
    nonzero = p[p > 0]
    entropy = max(0.0, float(-(nonzero * np.log(nonzero)).sum() / math.log(len(p))))
    carried = np.cumsum(np.sort(p)[::-1])
    fewest = int(np.searchsorted(carried, 0.9 - 1e-12) + 1)
    return {"max_share": float(p.max()), "entropy": entropy, "coverage": min(fewest, len(p)) / len(p)}
