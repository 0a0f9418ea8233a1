"""retrieval: R@1/5/10, mAP and median rank for every cross-modal direction, against chance."""
from __future__ import annotations

import copy
import itertools

from ..core.check import Check, CheckContext
from ..core.registry import register_check
from ..core.results import Figure, Finding, Measurement
from ..core.subject import Subject
from ..probes.retrieval_metrics import chance_map, chance_recall_at, collect_embeddings, direction_metrics

KS = (1, 5, 10)


def arrow(direction: str) -> str:
    return direction.replace("->", "→")


@register_check
class Retrieval(Check):
    """Cross-modal retrieval: is every direction between modalities well above chance?

    What it checks
    Embeds the evaluation items with the subject's `embed` capability (one L2-normalised
    embedding per item and modality, row i of every modality the same item; at most `max_items`
    items) and, for every ordered pair of modalities a→b, ranks the b-embeddings of all N items
    by cosine similarity to each a-embedding. Per direction: R@1, R@5, R@10 (share of queries
    whose true match ranks within K), mAP (one relevant item per query, so AP = 1/rank and mAP
    is the mean reciprocal rank), the median rank, and a one-sided binomial test of R@10 against
    chance (scipy.stats.binomtest). Chance: R@K = K/N, mAP = H_N/N. Ties count against the match,
    so a tower that embeds everything alike cannot score.
    A direction is at chance when its R@10 is at most `fail_ratio_to_chance` × chance or the
    binomial test cannot reject chance at p < `alpha`: then the check fails, and a modality at
    chance in every direction it takes part in is named ("tower 'audio' looks untrained"). It
    warns when a direction's R@10 is below `warn_ratio_to_chance` × chance, or its R@1 is below
    `warn_ratio` × the best direction's R@1 (a lagging modality).

    Why it matters
    A contrastive model's loss averages over modality pairs: when one tower never learns (LoRA
    that missed its layers, a frozen projection, a detached branch) the loss still falls on the
    other pairs, and a mean recall hides it. Seed 002 asks for "baseline metrics (R@1, R@5, R@10,
    mAP) for all retrieval directions" and "which modality pairs align well and which need
    improvement". Chance is K/N, so raw recalls mean little without it.

    Evidence
    A table of every direction's R@1, R@5, R@10, mAP, median rank and binomial p-value with the
    chance levels; a query × gallery heatmap of R@1; R@1 per direction as bars with chance
    marked. Metrics `<a>-><b>.recall@K`, `.map`, `.median_rank`, `.p_value`, `chance.*`, `items`,
    `mean_recall@1`, `worst_direction`, `at_chance`, `lagging`, `untrained_modalities`.

    Fixes
    lora-all-towers when a declared tower has nothing to train; learnable-temperature when the
    temperature is a fixed buffer (τ = 1 makes the InfoNCE softmax too flat to separate items);
    grad-clip for unstable training. grad-norms names frozen and starved towers.

    Options
    fail_ratio_to_chance (2.0): a direction whose R@10 ≤ this × chance (K/N) is at chance.
    alpha (0.01): and one whose R@10 is not above chance by a binomial test at this level.
    warn_ratio_to_chance (5.0): warn when a direction's R@10 is below this × chance.
    warn_ratio (0.5): warn when a direction's R@1 is below this × the best direction's R@1.
    max_items (1000): items embedded (the similarity matrix is N × N per direction).
    min_items (50): fewer items than this give a warning instead of a verdict.
    """

    slug = "retrieval"
    code = "MD010"
    title = "Cross-modal retrieval"
    fixes = ("lora-all-towers", "learnable-temperature", "grad-clip")
    default_options = {"fail_ratio_to_chance": 2.0, "alpha": 0.01, "warn_ratio_to_chance": 5.0, "warn_ratio": 0.5,
                       "max_items": 1000, "min_items": 50}

    def requires(self, subject: Subject) -> str | None:
        if subject.capabilities.embed is None:
            return "needs the `embed` capability (one embedding per item and modality)"
        # One batch through a copy of the model tells whether there is anything to retrieve.
        found = collect_embeddings(subject, model=copy.deepcopy(subject.model), batches=itertools.islice(subject.eval_batches, 1))
        n = len(next(iter(found.values()))) if found else 0
        if len(found) < 2 or n == 0:
            return f"embed gave {len(found)} modality(ies) and {n} items: nothing to retrieve"
        return None

    def measure(self, subject: Subject, ctx: CheckContext) -> Measurement:
        from scipy.stats import binomtest  # imported late: scipy.stats costs ~0.6 s at start-up

        embeddings = collect_embeddings(subject, max_items=self.options["max_items"])
        n = len(next(iter(embeddings.values()))) if embeddings else 0
        metrics = {"modalities": sorted(embeddings), "items": n, "directions": []}
        if len(embeddings) < 2 or n == 0:
            return Measurement(metrics=metrics)
        chance = {f"recall@{k}": chance_recall_at(k, n) for k in KS} | {"map": chance_map(n)}
        metrics.update({f"chance.{key}": value for key, value in chance.items()})
        found = direction_metrics(embeddings, KS)
        for (a, b), d in found.items():
            name, hits = f"{a}->{b}", int((d.pop("ranks") <= 10).sum())
            d["p_value"] = float(binomtest(hits, n, chance["recall@10"], alternative="greater").pvalue)
            metrics["directions"].append(name)
            metrics.update({f"{name}.{key}": value for key, value in d.items()})
        by_r1 = sorted(metrics["directions"], key=lambda x: (metrics[f"{x}.recall@1"], metrics[f"{x}.recall@10"]))
        metrics.update({"mean_recall@1": sum(d["recall@1"] for d in found.values()) / len(found),
                        "worst_direction": by_r1[0], "best_direction": by_r1[-1]})
        at_chance, lagging, untrained = self.verdicts(metrics)  # recorded for the report; judge re-derives them
        metrics.update({"at_chance": at_chance, "lagging": lagging, "untrained_modalities": untrained})
        return Measurement(metrics=metrics, figures=lambda: self.figures(metrics))

    def verdicts(self, m: dict) -> tuple[list[str], list[str], list[str]]:
        """(directions at chance, lagging directions, modalities at chance in every direction they take part in)."""
        o, at_chance, lagging = self.options, [], []
        best_r1, chance10 = m[m["best_direction"] + ".recall@1"], m["chance.recall@10"]
        for name in m["directions"]:
            r1, r10 = m[f"{name}.recall@1"], m[f"{name}.recall@10"]
            if r10 <= o["fail_ratio_to_chance"] * chance10 or m[f"{name}.p_value"] >= o["alpha"]:
                at_chance.append(name)
            elif r10 < o["warn_ratio_to_chance"] * chance10 or r1 < o["warn_ratio"] * best_r1:
                lagging.append(name)
        untrained = [t for t in m["modalities"] if all(x in at_chance for x in m["directions"] if t in x.split("->"))]
        return at_chance, lagging, untrained

    def figures(self, m: dict) -> list[Figure]:
        names, modalities = m["directions"], m["modalities"]
        columns = ["direction", "R@1", "R@5", "R@10", "mAP", "median rank", "p (R@10 > chance)"]
        rows = [[arrow(x)] + [m[f"{x}.{key}"] for key in ("recall@1", "recall@5", "recall@10", "map", "median_rank", "p_value")]
                for x in names]
        rows.append(["chance"] + [m[f"chance.{key}"] for key in ("recall@1", "recall@5", "recall@10", "map")] + [(m["items"] + 1) / 2, None])
        matrix = [[m.get(f"{a}->{b}.recall@1") if a != b else None for b in modalities] for a in modalities]  # (query, gallery)
        return [
            Figure("table", f"Retrieval per direction over {m['items']} items", {"columns": columns, "rows": rows}),
            Figure("heatmap", "R@1 per direction (row: query modality, column: gallery modality)", {
                "matrix": matrix, "xticklabels": modalities, "yticklabels": modalities, "xlabel": "gallery",
                "ylabel": "query", "colorbar": "R@1", "vmin": 0.0, "vmax": 1.0}),
            Figure("bar", "R@1 per direction", {
                "labels": [arrow(x) for x in names], "values": [m[f"{x}.recall@1"] for x in names], "ylabel": "R@1",
                "hlines": [{"y": m["chance.recall@1"], "label": f"chance R@1 = 1/{m['items']}"}]}),
        ]

    def describe(self, m: dict, name: str) -> str:
        return (f"{arrow(name)} R@1 {m[name + '.recall@1']:.3g} (chance {m['chance.recall@1']:.3g}), "
                f"R@10 {m[name + '.recall@10']:.3g} (chance {m['chance.recall@10']:.3g})")

    @staticmethod
    def untrained(towers: list[str]) -> str:
        if not towers:
            return ""
        names = ", ".join(f"'{t}'" for t in towers)
        return (f"; tower {names} looks untrained (at chance in every direction it takes part in)" if len(towers) == 1
                else f"; towers {names} look untrained (at chance in every direction they take part in)")

    def judge(self, measurement: Measurement) -> list[Finding]:
        """Directions at chance (naming untrained towers), then lagging ones; too few items is a warning of its own."""
        m, fixes = measurement.metrics, self.fixes  # every fix, for the runner to keep those that apply
        if len(m["modalities"]) < 2 or not m["items"]:  # `requires` skips these; kept for a changing eval set
            return [Finding("warn", "nothing-to-retrieve", f"embed gave {len(m['modalities'])} modality(ies) and "
                            f"{m['items']} items: nothing to retrieve", ("modalities", "items"))]
        if m["items"] < self.options["min_items"]:
            return [Finding("warn", "too-few-items", f"only {m['items']} items (min_items {self.options['min_items']}): "
                            "too few to judge retrieval", ("items",), fixes)]
        at_chance, lagging, untrained = self.verdicts(m)
        found = []
        if at_chance:
            worst = min(at_chance, key=lambda x: (m[f"{x}.recall@10"], m[f"{x}.recall@1"]))
            found.append(Finding("fail", "at-chance", f"{len(at_chance)} of {len(m['directions'])} directions at chance: "
                                 f"{self.describe(m, worst)}{self.untrained(untrained)}",
                                 ("at_chance", "untrained_modalities", f"{worst}.recall@10", "chance.recall@10"), fixes))
        if lagging:
            worst, best = min(lagging, key=lambda x: m[f"{x}.recall@1"]), m["best_direction"]
            found.append(Finding("warn", "lagging", f"{len(lagging)} lagging direction(s): {self.describe(m, worst)}; "
                                 f"best {arrow(best)} R@1 {m[best + '.recall@1']:.3g}",
                                 ("lagging", f"{worst}.recall@1", f"{best}.recall@1"), fixes))
        worst = m["worst_direction"]
        return found or [Finding("pass", "above-chance", f"all {len(m['directions'])} directions well above chance over "
                                 f"{m['items']} items: worst {self.describe(m, worst)}; mean R@1 {m['mean_recall@1']:.3g}",
                                 ("directions", "worst_direction", "mean_recall@1"))]
