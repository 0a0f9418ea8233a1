"""attention: do the attention maps look at something, without collapsing, and at every modality?"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import replace

import torch
from torch.nn import functional as F

from ..core.check import Check, CheckContext
from ..core.registry import register_check
from ..core.results import Figure, Finding, Measurement
from ..core.subject import Subject
from ..probes.attention_maps import LayerStats, record_attention
from ..probes.attribution import AttributionUnavailable, modality_attribution

MAX_LAYERS_SHOWN, MAX_HEADS_SHOWN, MAX_SIDE = 4, 8, 64  # heatmap panels; maps strided to ≤ 64×64
MAX_BARS = 40  # entropy bars per head up to this many heads, else one bar per layer


@register_check
class Attention(Check):
    """Attention maps: per-head entropy, collapse, uniformity, and the share each modality gets.

    What it checks
    It records the attention weights (B, H, L, S) of every attention layer over a few evaluation
    batches (model in eval mode, no grad), whatever the implementation: nn.MultiheadAttention
    (also inside nn.TransformerEncoderLayer, fast path turned off), F.scaled_dot_product_attention
    (also imported under another name), softmax(QKᵀ) written by hand, or the weights the model
    returns itself (capability `attentions`); see `modeldoctor.attention`. Per layer and head:
    the normalized entropy H/log(n) averaged over queries, n being the keys a query may attend to
    (masked keys, e.g. padding or causal, left out; queries with one key skipped); per layer the
    head mean, collapsed heads (below `collapse_entropy`) and uniform heads (above
    `uniform_entropy`). With capability `token_modalities` (modality -> mask over the key
    positions): per layer, each modality's share of the attention mass against its fair share (its
    share of the allowed keys); the ratio of the best layer is judged. With `embedding_layer` as
    well: integrated gradients (captum, zero baseline) over the embeddings of a few examples give
    each modality's share of the prediction (Σ|attribution| over its positions), judged against
    its share of positions; retrieval subjects and predictions that are not differentiable are not
    attributed (see `modeldoctor.attribution`).

    Why it matters
    Attention entropy collapse (Zhai et al. 2023) puts each query on one key and comes with
    unstable or stalled training; attention that stays uniform everywhere mixes tokens without
    looking at them. A multimodal model that never attends to a modality, or whose prediction does
    not depend on it, has learned to ignore it: the seed's astro model predicted redshift no better
    than the median while its spectrum tokens carried nothing.

    Evidence
    Attention maps per layer and head (mean over the examples; queries down, keys across), the
    normalized entropy per layer and head, a table of the layers, and with modalities their
    attention and attribution shares as ratios to the fair share, with the convergence delta of
    integrated gradients (a note when it is above `max_delta` of |F(x) − F(x′)|: raise
    `attribution_steps`).

    Fixes
    warmup-cosine when attention collapses (lower LR and longer warmup; QK-LayerNorm or σReparam
    are the architectural cures). Neglect of a modality has no automatic fix: the advice says where
    to look (its tokens, its codec, the objective, modality masking in training).

    Options
    collapse_entropy (0.1): a head or layer below this normalized entropy has collapsed; a layer
        whose head mean is below it warns; every head of every layer below it fails.
    uniform_entropy (0.98): warn when every layer's head mean is above this (uniform attention).
    min_modality_ratio (0.1): warn when a modality's attention share is below this multiple of its
        fair share in every layer.
    fail_modality_ratio (0.01): fail when it is below this multiple (ignored everywhere).
    min_attribution_ratio (0.1): warn when a modality's attribution share is below this multiple
        of its share of positions.
    max_delta (0.05): note when the integrated-gradients delta exceeds this share of |F(x) − F(x′)|.
    max_batches (4): evaluation batches recorded.
    attribution_examples (8), attribution_steps (32): examples and path steps of integrated gradients.
    """

    slug = "attention"
    code = "MD009"
    title = "Attention maps"
    fixes = ("warmup-cosine",)
    default_options = {
        "collapse_entropy": 0.1, "uniform_entropy": 0.98, "min_modality_ratio": 0.1, "fail_modality_ratio": 0.01,
        "min_attribution_ratio": 0.1, "max_delta": 0.05, "max_batches": 4, "attribution_examples": 8,
        "attribution_steps": 32,
    }

    def requires(self, subject: Subject) -> str | None:
        batch = next(iter(subject.eval_batches), None)
        if batch is None:
            return "the subject has no evaluation batches"
        try:
            found = record_attention(copy.deepcopy(subject.model), batch, subject.predict, subject.capabilities.attentions)
        except Exception as error:  # noqa: BLE001 - a probe that cannot run is a reason to skip
            return f"one forward with attention capture failed: {type(error).__name__}: {error}"
        if not found:
            return ("no attention found: no nn.MultiheadAttention, scaled_dot_product_attention or softmax(QKᵀ) "
                    "ran in the forward (declare capability `attentions` for other implementations)")
        return None

    def measure(self, subject: Subject, ctx: CheckContext) -> Measurement:
        o, caps = self.options, subject.capabilities
        layers: dict[str, LayerStats] = {}
        for batch in itertools.islice(subject.eval_batches, o["max_batches"]):
            ctx.ensure_time("attention capture")
            masks = {m: torch.as_tensor(k).bool() for m, k in caps.token_modalities(batch).items()} if caps.token_modalities else None
            for record in record_attention(subject.model, batch, subject.predict, caps.attentions):
                layers.setdefault(record.name, LayerStats(record.name, record.source)).add(record, masks)
        stats = list(layers.values())
        heads = {s.name: s.head_entropy() for s in stats}
        means = {name: float(torch.tensor(h).nanmean()) for name, h in heads.items()}
        c, u = o["collapse_entropy"], o["uniform_entropy"]
        finite = {name: v for name, v in means.items() if math.isfinite(v)}
        metrics = {"layers": len(stats), "heads": sum(len(h) for h in heads.values()),
                   "collapsed_heads": sum(v < c for h in heads.values() for v in h),
                   "uniform_heads": sum(v > u for h in heads.values() for v in h),
                   "min_layer_entropy": min(finite.values(), default=math.nan),
                   "max_layer_entropy": max(finite.values(), default=math.nan),
                   "lowest_entropy_layer": min(finite, key=finite.get, default=None)}
        metrics.update({f"entropy.{name}": v for name, v in means.items()})
        metrics.update({f"head_entropy.{name}": h for name, h in heads.items()})
        notes = [f"{len(stats) - MAX_LAYERS_SHOWN} more layers are measured but not drawn"] if len(stats) > MAX_LAYERS_SHOWN else []
        if caps.token_modalities:
            ctx.ensure_time("modality shares and attribution")
            self.modalities(subject, stats, metrics, notes)
        return Measurement(metrics=metrics, notes=notes,
                           figures=lambda: self.figures(stats, heads, means, metrics if caps.token_modalities else None))

    def figures(self, stats: list[LayerStats], heads: dict, means: dict, modalities: dict | None) -> list[Figure]:
        """Maps of the first layers, the entropy bars and table, and with modalities (the metrics) their shares."""
        return ([self.maps(i, s) for i, s in enumerate(stats[:MAX_LAYERS_SHOWN])] + self.entropy_figures(stats, heads, means)
                + (self.modality_figures(modalities) if modalities is not None else []))

    def maps(self, index: int, stats: LayerStats) -> Figure:
        mean = stats.mean_map()  # (H, L, S)
        heads, queries, keys = mean[:MAX_HEADS_SHOWN].shape
        step, group = math.ceil(queries / MAX_SIDE), math.ceil(keys / MAX_SIDE)
        # Big maps: every step-th query; keys summed in groups, so no attention mass drops out of the picture.
        shown = F.pad(mean[:MAX_HEADS_SHOWN, ::step], (0, -keys % group)).reshape(heads, -1, math.ceil(keys / group), group).sum(-1)
        images = [{"label": f"layer {index} / head {h}", "pixels": shown[h].tolist()} for h in range(heads)]
        reduced = (f", every {step}th query" if step > 1 else "") + (f", keys summed in groups of {group}" if group > 1 else "")
        return Figure("images", f"Attention maps, layer {index} ({stats.name}): mean over {stats.map_count} examples, "
                      f"queries down, keys across{reduced}", {"images": images, "vmin": 0.0, "vmax": float(shown.max())})

    def entropy_figures(self, stats: list[LayerStats], heads: dict, means: dict) -> list[Figure]:
        o = self.options
        per_head = sum(len(h) for h in heads.values()) <= MAX_BARS
        labels = [f"L{i} h{h}" if per_head else f"L{i}" for i, s in enumerate(stats) for h in range(len(heads[s.name]) if per_head else 1)]
        values = [v for s in stats for v in (heads[s.name] if per_head else [means[s.name]])]
        rows = [[i, s.name, s.source, len(heads[s.name]), "×".join(map(str, s.shape[1:])), f"{means[s.name]:.3f}",
                 sum(v < o["collapse_entropy"] for v in heads[s.name]), sum(v > o["uniform_entropy"] for v in heads[s.name])]
                for i, s in enumerate(stats)]
        return [Figure("bar", "Normalized attention entropy H/log(n) per layer (L, as in the table) and "
                       + ("head (h)" if per_head else "head mean"), {
            "labels": labels, "values": values, "ylabel": "normalized entropy",
            "hlines": [{"y": o["collapse_entropy"], "label": "collapse"}, {"y": o["uniform_entropy"], "label": "uniform"}]}),
            Figure("table", "Attention layers", {"columns": ["#", "layer", "found as", "heads", "queries×keys",
                                                             "entropy (head mean)", "collapsed heads", "uniform heads"], "rows": rows})]

    def modalities(self, subject: Subject, stats: list[LayerStats], metrics: dict, notes: list[str]) -> None:
        """Adds each modality's attention share (and, with `embedding_layer`, its attribution share) to `metrics`."""
        per_layer = [s.shares() for s in stats]
        names = list(dict.fromkeys(m for shares in per_layer for m in shares))
        if not names:
            notes.append("no token_modalities mask matches the key count of any attention layer")
        for m in names:
            found = [shares[m] for shares in per_layer if m in shares]
            metrics[f"attention_share.{m}"] = sum(share for share, _ in found) / len(found)
            metrics[f"fair_share.{m}"] = sum(fair for _, fair in found) / len(found)
            metrics[f"attention_ratio.{m}"] = max((share / fair for share, fair in found if fair > 0), default=math.nan)
        if not subject.capabilities.embedding_layer:
            return
        try:
            found = modality_attribution(subject, subject.model, next(iter(subject.eval_batches)),
                                         examples=self.options["attribution_examples"], n_steps=self.options["attribution_steps"])
        except AttributionUnavailable as reason:
            notes.append(f"no attribution: {reason}")
            return
        metrics["attribution_relative_delta"] = found.relative_delta
        if not found.relative_delta <= self.options["max_delta"]:
            notes.append(f"integrated gradients' convergence delta is {found.relative_delta:.1%} of |F(x) − F(x′)| "
                         f"(above {self.options['max_delta']:.0%}): raise attribution_steps")
        for m, share in found.shares.items():
            metrics[f"attribution_share.{m}"] = share
            metrics[f"attribution_ratio.{m}"] = share / found.token_shares[m] if found.token_shares[m] else math.nan

    def modality_figures(self, metrics: dict) -> list[Figure]:
        # The modalities in the order they were measured: attention shares first, then attributions.
        names = [key.split(".", 1)[1] for key in metrics if key.startswith("attention_ratio.")]
        attributed = [key.split(".", 1)[1] for key in metrics if key.startswith("attribution_ratio.")]
        labels = [f"{m}: attention" for m in names] + [f"{m}: attribution" for m in attributed]
        values = [metrics[f"attention_ratio.{m}"] for m in names] + [metrics[f"attribution_ratio.{m}"] for m in attributed]
        rows = [[m] + [f"{metrics[f'{key}.{m}']:.3f}" if f"{key}.{m}" in metrics else "—" for key in
                       ("fair_share", "attention_share", "attention_ratio", "attribution_share", "attribution_ratio")] for m in names]
        return [Figure("bar", "Modality shares as multiples of their fair share (attention: best layer)", {
            "labels": labels, "values": values, "ylabel": "share / fair share",
            "hlines": [{"y": 1.0, "label": "fair share"}, {"y": self.options["min_modality_ratio"], "label": "warn below"}]}),
            Figure("table", "Modalities", {"columns": ["modality", "fair share", "attention share (mean over layers)",
                                                       "attention ratio (best layer)", "attribution share", "attribution ratio"],
                                           "rows": rows})]

    def judge(self, measurement: Measurement) -> list[Finding]:
        """Collapse, uniformity, then each neglected modality (attention, then attribution); a pass when none."""
        o, m, found = self.options, measurement.metrics, []
        if m["min_layer_entropy"] < o["collapse_entropy"]:
            keys, fixes, advice = ("min_layer_entropy", "collapsed_heads", "heads"), ("warmup-cosine",), (
                "Entropy collapse comes with unstable training (Zhai et al. 2023): lower the LR or warm up longer "
                "(warmup-cosine); QK-LayerNorm or σReparam on the attention keep the logits bounded.",)
            if m["collapsed_heads"] == m["heads"]:
                found.append(Finding("fail", "collapse", f"every head of every layer has collapsed (normalized entropy < "
                                     f"{o['collapse_entropy']:g})", keys, fixes, advice))
            else:
                found.append(Finding("warn", "collapse", f"layer {m['lowest_entropy_layer']} has collapsed (head-mean normalized "
                                     f"entropy {m['min_layer_entropy']:.3f} < {o['collapse_entropy']:g})",
                                     (*keys, "lowest_entropy_layer"), fixes, advice))
        if m["min_layer_entropy"] > o["uniform_entropy"]:
            found.append(Finding("warn", "uniform", f"attention is uniform in every layer (normalized entropy ≥ "
                                 f"{m['min_layer_entropy']:.3f})", ("min_layer_entropy",), advice=(
                                     "Uniform attention mixes tokens without looking at them: on a trained model, check that "
                                     "queries and keys get gradients and that the tokens carry position information.",)))
        neglected = []
        for key in (k for k in m if k.startswith("attention_ratio.")):
            name, ratio = key.split(".", 1)[1], m[key]
            if ratio < o["min_modality_ratio"]:
                neglected.append(Finding("fail" if ratio < o["fail_modality_ratio"] else "warn", "modality",
                                         f"modality '{name}' gets {m['attention_share.' + name]:.2%} of the attention for a "
                                         f"fair share of {m['fair_share.' + name]:.1%} ({ratio:.3f}× at best)",
                                         (key, f"attention_share.{name}", f"fair_share.{name}")))
        for key in (k for k in m if k.startswith("attribution_ratio.")):
            name = key.split(".", 1)[1]
            if m[key] < o["min_attribution_ratio"]:
                neglected.append(Finding("warn", "attribution", f"modality '{name}' accounts for {m['attribution_share.' + name]:.2%} "
                                         f"of the prediction's attribution ({m[key]:.3f}× its share of positions)",
                                         (key, f"attribution_share.{name}")))
        if neglected:  # no automatic fix for neglect: where to look, said once
            neglected[0] = replace(neglected[0], advice=(
                "A neglected modality: check that its tokens reach the model unmasked, that its codec keeps the "
                "information (codec-roundtrip), and that the objective needs it; masking the other modalities "
                "in training (modality dropout) makes the model use it.",))
        return found + neglected or [Finding(
            "pass", "healthy", f"{m['layers']} attention layer(s), head-mean normalized entropy {m['min_layer_entropy']:.2f}–"
            f"{m['max_layer_entropy']:.2f}; no collapse, no neglected modality", ("layers", "min_layer_entropy", "max_layer_entropy"))]
