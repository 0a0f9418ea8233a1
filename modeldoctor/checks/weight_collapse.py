"""weight-collapse: embedding tables, codebooks and MoE routers whose weights alone show a collapse."""
from __future__ import annotations

import math

import torch

from ..core.check import Check, CheckContext
from ..core.evidence import Weights
from ..core.registry import register_check
from ..core.results import Figure, Finding, Measurement, ordered
from ..probes import weight_tables as wt
from ..probes.weight_stats import tensor_stats
from ..probes.weight_tables import Gate, Table

FLOP_BUDGET = 2**32  # per table: the n² · D products of the sample's cosines (≈ 0.3 s on one core)
KEEP = 20  # tables and routers listed in the metrics, worst first
NO_TABLES = ("no embedding table, VQ codebook or MoE router found by name (embed*, codebook, pos_embed, "
             "gate/router weights next to experts.<i>)")
CODEBOOK_ADVICE = ("re-initialize dead and duplicated codes from encoder outputs (k-means restart, or dead-code "
                   "restarts while training: `restart_dead_codes` in modeldoctor.nn.VectorQuantizer); l2-normalized "
                   "codes or a lower-dimensional lookup also keep codes apart")
EMBEDDING_ADVICE = ("the rows collapsed onto a few vectors: check the embedding's learning rate and weight decay, "
                    "and that the indices reach every row (tokenizer or vocabulary mismatch)")
ROUTER_ADVICE = ("add a load-balancing loss (Switch Transformer, Fedus et al. 2021, α = 0.01) and noisy top-k gating "
                 "(Shazeer et al. 2017); make sure the router gets a gradient (experts' outputs weighted by the gate)")


@register_check
class WeightCollapse(Check):
    """Weight collapse: lookup tables whose rows collapsed onto a few vectors, routers that cannot spread tokens.

    What it checks
    Tables: every embedding layer and table-named tensor (token and position embeddings, VQ codebooks
    such as `quantizer.embedding.weight` or vector-quantize-pytorch's `_codebook.embed` (1|H, K, D)).
    Rows at exactly zero are counted apart; the others (a seeded sample of at most `max_rows`, fewer
    for wide rows) are clustered greedily: two rows are near-duplicates when their cosine exceeds
    `duplicate_cosine` and their norms differ by at most `norm_tolerance`. The clusters are compared
    with those of as many rows drawn from a Gaussian with the sample's mean and covariance: what
    chance gives a table of that shape (rows in a few dimensions, or in a narrow cone far from the
    origin, are often that close; clumps on a few vectors are not chance). Distinct share = clusters
    / chance clusters (at most 1), over the non-zero rows, the zero rows counting as one row.
    Routers: 2-D weights of modules named like an MoE gate (`gate`, `router`, `router.classifier`,
    `gate.wg`, a raw `w_gate`), never a gated MLP's `gate_proj`/`gate_up_proj` nor a
    `shared_expert_gate`; E is the small dimension (2..512), checked against the sibling expert
    tensors. Per router: near-identical rows after subtracting the mean row (which adds the same
    logit to every expert), and a data-free routing simulation: `draws` seeded inputs x ~ N(0, I)
    (what a LayerNorm before the router gives), logits x Wᵀ + b, each expert's top-1 and top-2
    share, their normalized entropy and the coverage (the fewest experts carrying 90% of the top-1
    choices, over E).

    Why it matters
    A codebook whose codes sit on a few vectors quantizes everything to those few (seed 000's
    collapsing codecs); an embedding whose rows coincide cannot tell its tokens apart. A router whose
    rows are equal cannot separate its experts, and one whose bias or single direction sends most
    inputs to one expert is the collapse of seed 004, visible before any data is run. Real inputs are
    not isotropic: the simulation measures the gate's own bias, and is judged only at the extremes.
    Trained tables pass: rarely used rows stay near their random init, and random rows are distinct.
    Not seen: dead codes that never moved from a random init (they are distinct; codec-roundtrip
    counts usage on data), and a table collapsed onto one point with jitter, which looks like a
    codebook fitted to data of that small spread.

    Evidence
    Per table: rows, sampled rows, clusters and chance clusters, distinct share, rows with a
    near-duplicate, duplicate pairs, zero rows, spread (rms distance to the mean row over the rms
    norm). Per router: E, max top-1 share, normalized entropy, coverage, distinct rows, max centred
    row cosine, z-loss, the bias lead (top bias over the next, in logit std). The 20 worst of each,
    a bar chart of the worst router's simulated shares, a table of both.

    Fixes
    codebook-reset for a collapsed VQ codebook (re-initialize dead codes from encoder outputs,
    k-means restart); load-balance-loss and noisy-top-k for a collapsed or inseparable router,
    router-z-loss too when its simulated logits are large; training-side advice for embeddings.

    Options
    duplicate_cosine (0.99): rows (router rows: centred) with a larger cosine are near-duplicates...
    norm_tolerance (0.1): ...when their norms also differ by at most this share.
    fail_distinct (0.1), warn_distinct (0.5): fail/warn when a table's distinct share is below this.
    min_rows (8): tables with fewer rows are not judged.
    min_chance_share (0.25): tables where chance gives fewer clusters per row than this are not judged.
    max_rows (4096): rows sampled per table (fewer for wide rows: n² · D ≤ 2³²).
    fail_router_distinct (0.5): fail when a router has at most this share of E distinct rows; fewer than E warns.
    fail_share (0.5), fail_multiple (3.0): fail when one expert's top-1 share exceeds max(fail_share, fail_multiple/E), at most 0.9.
    warn_share (0.3), warn_multiple (2.0): warn above max(warn_share, warn_multiple/E), at most 0.75.
    fail_coverage (0.25), warn_coverage (0.5): with E ≥ 4, fail/warn when 90% of the choices go to at most this share of experts.
    warn_z_loss (50.0): prescribe router-z-loss as well when the simulated z-loss exceeds this.
    draws (4096): simulated router inputs.
    """

    slug = "weight-collapse"
    code = "MD015"
    title = "Collapse in tables and routers"
    needs = "weights"
    fixes = ("codebook-reset", "load-balance-loss", "noisy-top-k", "router-z-loss")
    default_options = {
        "duplicate_cosine": 0.99, "norm_tolerance": 0.1, "fail_distinct": 0.1, "warn_distinct": 0.5, "min_rows": 8,
        "min_chance_share": 0.25, "max_rows": 4096, "fail_router_distinct": 0.5, "fail_share": 0.5, "fail_multiple": 3.0,
        "warn_share": 0.3, "warn_multiple": 2.0, "fail_coverage": 0.25, "warn_coverage": 0.5, "warn_z_loss": 50.0,
        "draws": 4096,
    }

    def targets(self, weights: Weights) -> tuple[list[Table], list[Gate]]:
        return [t for t in wt.find_tables(weights) if t.rows >= self.options["min_rows"]], wt.find_gates(weights)

    def requires(self, weights: Weights) -> str | None:
        return None if any(self.targets(weights)) else NO_TABLES

    def table(self, weights: Weights, table: Table, seed: int) -> dict:
        o, close = self.options, (self.options["duplicate_cosine"], self.options["norm_tolerance"])
        rows = wt.table_rows(weights, table)  # (K, D)
        whole = table.head is None and len(weights.info(table.name).shape) == 2
        norms = tensor_stats(weights, table.name).row_norms if whole else rows.float().nan_to_num(0.0).norm(dim=1)  # (K,)
        live = torch.nonzero(norms > 0).squeeze(1)  # (K',) the rows not exactly zero
        size = min(len(live), o["max_rows"], max(64, math.isqrt(FLOP_BUDGET // max(table.dim, 1))))
        pick = live[torch.randperm(len(live), generator=torch.Generator().manual_seed(seed))[:size].sort().values]
        sample = rows[pick].float().nan_to_num(0.0)  # (n, D)
        sample = sample[sample.norm(dim=1) > 0]
        n, zeros = len(sample), table.rows - len(live)
        found = wt.near_duplicates(sample, *close)
        spread = wt.relative_spread(sample)
        chance = n if found["clusters"] == n or spread < 1e-6 else wt.chance_clusters(sample, *close, seed)  # one point: no chance
        share = (min(1.0, found["clusters"] / chance) if n else 0.0) * len(live) / table.rows + (zeros > 0) / table.rows
        return {"name": table.name, "label": table.label, "rows": table.rows, "dim": table.dim, "sampled": n,
                "clusters": found["clusters"], "chance_clusters": chance, "chance_share": chance / n if n else 1.0,
                "distinct_share": share, "distinct_rows": round(share * table.rows), "spread": spread,
                "duplicate_pairs": found["duplicate_pairs"], "rows_with_duplicate": found["rows_with_duplicate"],
                "zero_rows": zeros, "max_cosine": found["max_cosine"], "codebook": table.codebook}

    def router(self, weights: Weights, gate: Gate, seed: int) -> dict:
        o = self.options
        weight, bias = wt.gate_weight(weights, gate)  # (E, d), (E,)
        centred = weight - weight.mean(0)  # the mean row adds one logit to all experts: it does not route
        flat = centred.norm(dim=1) <= 1e-6 * float(weight.norm(dim=1).max()) + 1e-30  # (E,) experts equal to the mean
        found = wt.near_duplicates(centred[~flat], o["duplicate_cosine"], o["norm_tolerance"])
        simulated = wt.simulate_routing(weight, bias, o["draws"], seed)
        top1 = wt.share_summary(simulated["top1"])
        scale = math.sqrt(float(weight.square().sum(1).mean()))  # rms std of the logits
        gap = float(bias.max() - bias.topk(2).values[1])  # the top bias over the next
        lead = gap / scale if scale > 0 else math.inf if gap > 0 else 0.0  # in logit std
        return {"name": gate.name, "experts": gate.experts, "dim": gate.dim, "siblings": gate.siblings,
                "distinct_rows": found["clusters"] + int(flat.any()), "distinct_share": (found["clusters"] + int(flat.any())) / gate.experts,
                "max_row_cosine": 1.0 if flat.sum() >= 2 else found["max_cosine"], "top_expert": int(torch.tensor(simulated["top1"]).argmax()),
                **top1, "top2_max_share": max(simulated["top2"]), "z_loss": simulated["z_loss"],
                "bias_lead": float(lead), "shares": simulated["top1"], "top2_shares": simulated["top2"]}

    def measure(self, weights: Weights, ctx: CheckContext) -> Measurement:
        tables, gates = self.targets(weights)
        found_tables, found_routers = [], []
        for table in tables:
            ctx.ensure_time("clustering table rows")
            found_tables.append(self.table(weights, table, ctx.seed))
        for gate in gates:
            ctx.ensure_time("simulating routers")
            found_routers.append(self.router(weights, gate, ctx.seed))
        found_tables.sort(key=lambda t: t["distinct_share"])
        found_routers.sort(key=lambda r: (min(r["distinct_share"], r["coverage"] / 0.9), -r["max_share"] * r["experts"]))
        metrics = {"num_tables": len(found_tables), "num_routers": len(found_routers),
                   "tables": found_tables[:KEEP], "routers": found_routers[:KEEP]}
        sampled = [t["label"] for t in found_tables if t["sampled"] < t["rows"] - t["zero_rows"]]
        notes = [f"judged on a seeded sample of their rows: {', '.join(sampled[:5])}"] if sampled else []
        return Measurement(metrics=metrics, figures=lambda: self.figures(metrics), notes=notes)

    def figures(self, m: dict) -> list[Figure]:
        figures = []
        if m["routers"]:
            worst = m["routers"][0]
            labels = [str(i) for i in range(worst["experts"])]
            figures.append(Figure("bar", f"Simulated top-1 shares of `{worst['name']}` (inputs N(0, I))", {
                "labels": labels, "values": worst["shares"], "xlabel": "expert", "ylabel": "share of simulated inputs",
                "hlines": [{"y": 1 / worst["experts"], "label": "fair share 1/E"}]}))
        figures.append(Figure("table", "Tables and routers", {
            "columns": ["tensor", "rows / E", "distinct rows", "rows with a duplicate", "zero rows", "max top-1 share", "coverage"],
            "rows": [[t["label"], t["rows"], t["distinct_rows"], t["rows_with_duplicate"], t["zero_rows"], "", ""] for t in m["tables"]]
            + [[r["name"], r["experts"], r["distinct_rows"], "", "", r["max_share"], r["coverage"]] for r in m["routers"]]}))
        return figures

    def table_findings(self, t: dict) -> list[Finding]:
        o = self.options
        status = "fail" if t["distinct_share"] < o["fail_distinct"] else "warn" if t["distinct_share"] < o["warn_distinct"] else None
        if status is None or t["chance_share"] < o["min_chance_share"]:
            return []
        zeros = f"; {t['zero_rows']} rows exactly zero" if t["zero_rows"] else ""
        advice = [CODEBOOK_ADVICE if t["codebook"] else EMBEDDING_ADVICE]
        if t["zero_rows"] > t["rows"] / 2:
            advice.append(f"{t['zero_rows']} of {t['rows']} rows of `{t['label']}` are exactly zero: never trained "
                          "or zero-initialized rows (padding, reserved or added tokens, dead codes)")
        chance = f" (random rows of its mean and covariance: {t['chance_clusters']})" if t["chance_clusters"] < t["sampled"] else ""
        return [Finding(status, "collapsed-table", f"`{t['label']}`: {t['clusters']} distinct rows among {t['sampled']} "
                        f"sampled{chance}{zeros}: distinct share {t['distinct_share']:.0%}", ("tables",),
                        ("codebook-reset",) if t["codebook"] else (), advice, (t["name"],))]

    def router_findings(self, r: dict) -> list[Finding]:
        o, experts = self.options, r["experts"]
        fixes = ("load-balance-loss", "noisy-top-k") + (("router-z-loss",) if r["z_loss"] > o["warn_z_loss"] else ())
        found = []
        if r["distinct_rows"] < experts:
            status = "fail" if r["distinct_rows"] <= o["fail_router_distinct"] * experts else "warn"
            found.append(Finding(status, "inseparable-experts", f"router `{r['name']}`: {r['distinct_rows']} distinct row(s) "
                                 f"for {experts} experts (max centred row cosine {r['max_row_cosine']:.3f}): the gate "
                                 "cannot tell those experts apart", ("routers",), fixes,
                                 ["re-initialize the router with small random rows (std ≈ 1/√d) and " + ROUTER_ADVICE],
                                 (r["name"],)))
        bounds = {"fail": min(0.9, max(o["fail_share"], o["fail_multiple"] / experts)),
                  "warn": min(0.75, max(o["warn_share"], o["warn_multiple"] / experts))}
        for status in ("fail", "warn"):
            narrow = experts >= 4 and r["coverage"] <= o[f"{status}_coverage"]
            if r["max_share"] > bounds[status] or narrow:
                advice = [ROUTER_ADVICE]
                if r["bias_lead"] == math.inf:
                    advice.append("the router weights are zero: the bias alone picks the experts, the same for every token")
                elif r["bias_lead"] > 3:
                    advice.append(f"the bias alone gives expert {r['top_expert']} a lead of {r['bias_lead']:.1f} logit "
                                  "std over the next: reset the router bias to zero")
                found.append(Finding(status, "router-collapse", f"router `{r['name']}` on isotropic inputs: expert "
                                     f"{r['top_expert']} takes {r['max_share']:.0%} of the top-1 choices (fair share "
                                     f"{1 / experts:.0%}), 90% go to {round(r['coverage'] * experts)} of {experts} "
                                     "experts", ("routers",), fixes, advice, (r["name"],)))
                break
        return found

    def judge(self, measurement: Measurement) -> list[Finding]:
        m = measurement.metrics
        found = ordered([f for t in m["tables"] for f in self.table_findings(t)]
                        + [f for r in m["routers"] for f in self.router_findings(r)])
        if found:
            return found
        parts = []
        judged = [t for t in m["tables"] if t["chance_share"] >= self.options["min_chance_share"]]
        if judged:
            parts.append(f"{m['num_tables']} table(s), lowest distinct share {judged[0]['distinct_share']:.0%} "
                         f"(`{judged[0]['label']}`)")
        if len(judged) < len(m["tables"]):
            parts.append(f"{len(m['tables']) - len(judged)} table(s) too narrow to judge (random rows of their "
                         "mean and covariance are mostly near-duplicates too)")
        if m["routers"]:
            r = max(m["routers"], key=lambda r: r["max_share"] * r["experts"])  # the most above its fair share
            parts.append(f"{m['num_routers']} router(s), largest simulated expert share {r['max_share']:.2f} "
                         f"(`{r['name']}`, E = {r['experts']})")
        return [Finding("pass", "distinct", "; ".join(parts), ("tables", "routers"))]
