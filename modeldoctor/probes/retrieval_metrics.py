"""Cross-modal retrieval: embedding collection, ranks, R@K, mAP, chance levels and an InfoNCE loss.

A retrieval subject declares `capabilities.embed`: embed(model, batch) -> {modality: (B, D)},
one embedding per item per modality, row i of every modality being the same item. Embeddings are
L2-normalised and compared by cosine similarity. For a direction a→b, each item's a-embedding is
a query and the b-embeddings of all N items are the gallery; the query's one relevant item is its
own row. So with rank r (1 = best) of the true match:

    R@K = share of queries with r ≤ K          chance K/N
    AP  = 1/r (one relevant item), mAP = mean 1/r (= MRR)   chance H_N/N, H_N = Σ_{i≤N} 1/i

Ties count against the match (r = number of gallery items scoring at least as high as it), so a
tower that outputs the same embedding for everything ranks every match last instead of first.
"""
from __future__ import annotations

import itertools
import math
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..core.subject import Batch, Subject

MAX_ITEMS = 1000  # items (rows) used for evaluation: the similarity matrix is N × N per direction


@torch.no_grad()
def collect_embeddings(subject: Subject, *, model: nn.Module | None = None, batches: Iterable[Batch] | None = None,
                       max_items: int = MAX_ITEMS) -> dict[str, torch.Tensor]:
    """{modality: (N, D) float L2-normalised embeddings} over the evaluation batches, model in eval mode.

    Stops after `max_items` items; every modality keeps the same N rows (the same items).
    """
    embed = subject.capabilities.embed
    model = subject.model if model is None else model
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    count = 0
    try:
        for batch in subject.eval_batches if batches is None else batches:
            if count >= max_items:
                break
            found = embed(model, batch)
            sizes = {name: len(e) for name, e in found.items()}
            if len(set(sizes.values())) > 1:
                raise ValueError(f"embed returned different numbers of items per modality: {sizes}")
            for name, embedding in found.items():
                parts.setdefault(name, []).append(embedding.detach().float().reshape(len(embedding), -1).cpu())
            count += next(iter(sizes.values()), 0)
    finally:
        model.train(was_training)
    return {name: F.normalize(torch.cat(chunks)[:max_items], dim=-1) for name, chunks in parts.items()}


def match_ranks(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """(N,) rank (1 = best) of gallery row i for query row i under cosine similarity; ties count against it.

    queries, gallery: (N, D) L2-normalised.
    """
    similarity = queries.double() @ gallery.double().T  # (N, N)
    true = similarity.diagonal().unsqueeze(1)  # (N, 1)
    return (similarity >= true).sum(dim=1)  # the match itself counts once: rank ≥ 1


def recall_at(ranks: torch.Tensor, k: int) -> float:
    """Share of queries whose true match ranks within the top k."""
    return float((ranks <= k).double().mean())


def mean_average_precision(ranks: torch.Tensor) -> float:
    """mAP with one relevant item per query: AP = 1/rank, so mAP is the mean reciprocal rank."""
    return float((1.0 / ranks.double()).mean())


def chance_recall_at(k: int, n: int) -> float:
    """Expected R@K of a random ranking of n items: K/N."""
    return min(k, n) / n


def chance_map(n: int) -> float:
    """Expected mAP (= MRR) of a random ranking of n items: H_n / n."""
    return sum(1.0 / i for i in range(1, n + 1)) / n


def directions(modalities: Iterable[str]) -> list[tuple[str, str]]:
    """Every ordered pair (query modality, gallery modality) of distinct modalities."""
    return list(itertools.permutations(modalities, 2))


def direction_metrics(embeddings: dict[str, torch.Tensor], ks: tuple[int, ...] = (1, 5, 10)) -> dict[tuple[str, str], dict]:
    """{(a, b): {"recall@K": ..., "map": ..., "median_rank": ..., "ranks": (N,)}} for every ordered pair."""
    found = {}
    for a, b in directions(embeddings):
        ranks = match_ranks(embeddings[a], embeddings[b])
        found[a, b] = {**{f"recall@{k}": recall_at(ranks, k) for k in ks}, "map": mean_average_precision(ranks),
                       "median_rank": float(ranks.double().median()), "ranks": ranks}
    return found


def score(embeddings: dict[str, torch.Tensor], metric: str = "recall@1") -> float:
    """`metric` ("recall@K" or "map") averaged over every ordered direction."""
    if len(embeddings) < 2:
        raise ValueError(f"retrieval needs at least two modalities, embed gave {sorted(embeddings)}")
    per_direction = []
    for a, b in directions(embeddings):
        ranks = match_ranks(embeddings[a], embeddings[b])
        if metric == "map":
            per_direction.append(mean_average_precision(ranks))
        elif metric.startswith("recall@"):
            per_direction.append(recall_at(ranks, int(metric.split("@", 1)[1])))
        else:
            raise ValueError(f"unknown retrieval metric {metric!r} (use recall@K or map)")
    return sum(per_direction) / len(per_direction)


def evaluate_retrieval(subject: Subject, model: nn.Module | None = None) -> float:
    """The subject's task metric (recall@K or map, mean over directions) on its evaluation batches."""
    return score(collect_embeddings(subject, model=model), subject.task.metric)


def chance_recall(subject: Subject, k: int = 1) -> float:
    """R@K of a random ranking over the items `evaluate` uses: K/N (the trivial baseline of recall@K)."""
    n = len(next(iter(collect_embeddings(subject).values())))
    return chance_recall_at(k, n)


def chance_baseline(subject: Subject) -> dict | None:
    """{"name", "value"} of a random ranking for the subject's retrieval metric, like bench's trivial baseline."""
    metric = subject.task.metric
    n = len(next(iter(collect_embeddings(subject).values())))
    if metric == "map":
        return {"name": "chance (random ranking)", "value": chance_map(n)}
    if metric.startswith("recall@"):
        return {"name": "chance (random ranking)", "value": chance_recall_at(int(metric.split("@", 1)[1]), n)}
    return None


def info_nce(embeddings: dict[str, torch.Tensor], logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) averaged over every pair of modalities.

    embeddings: {modality: (B, D)}, row i the same item everywhere; logit_scale: log(1/τ), used as
    exp(logit_scale) clamped at 100 as CLIP does.
    """
    normalised = {name: F.normalize(e, dim=-1) for name, e in embeddings.items()}
    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    losses = []
    for a, b in itertools.combinations(normalised, 2):
        logits = scale * normalised[a] @ normalised[b].T  # (B, B): row a-item, column b-item
        target = torch.arange(len(logits), device=logits.device)
        losses.append((F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2)
    return torch.stack(losses).mean()
