"""spectral-shape: the spectrum of each weight matrix, as WeightWatcher reads it (opt-in)."""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from ..core.check import Check, CheckContext
from ..core.evidence import Weights
from ..core.registry import register_check
from ..core.results import Figure, Finding, Measurement
from ..probes.spectra import PowerLawFit, as_matrix, esd, fit_power_law, power_law_cdf, singular_values, stable_rank
from ..probes.weight_layout import is_float, layers

WW_OVER, WW_UNDER = 2.0, 6.0  # WeightWatcher's readings: alpha below is over-trained, above under-trained
KINDS = ("linear", "conv", "attention-in-proj", "rnn")  # matrices that multiply; embeddings are looked up
OFF = "spectral analysis is off; pass --spectral (or options {'spectral-shape': {'enabled': True}})"
ADVICE_RANK = ("a rank-collapsed layer: check for a vanishing path, too-high weight decay, or a layer trained far "
               "too long; re-initialize it")
ADVICE_ALPHA = ("alpha < 2 is WeightWatcher's over-trained reading, contested for small layers: evidence, not a "
                "verdict; compare held-out metrics with an earlier checkpoint, and train less or regularize if they fell")


@register_check
class SpectralShape(Check):
    """Spectral shape: the power-law tail exponent alpha and the stable rank of every weight matrix.

    What it checks
    Off unless enabled (`--spectral`). Every float weight of a linear, convolution, attention
    in-projection or RNN layer with both dimensions >= `min_dim`, as a matrix W (m, n) (a conv
    weight (out, in, *k) as (out, in·∏k)): the eigenvalues λ of WᵀW (the squared singular values),
    the power-law exponent alpha of their tail by maximum likelihood, alpha = 1 + n / Σ ln(λ_i/λ_min),
    with λ_min chosen to minimize the KS distance (Clauset, Shalizi & Newman 2009; the `powerlaw`
    fit WeightWatcher uses), that KS distance, and the stable rank ‖W‖_F²/‖W‖_2². All singular
    values when min(m, n) <= `full_svd_max`, else the top `top_q` by randomized SVD (the fit uses
    the tail, which is the top of the spectrum; ‖W‖_F comes from the tensor). Warns when a layer's
    stable rank is below `warn_stable_rank` (essentially rank one), and, only if `warn_alpha` is
    set, when its alpha is below it. The fit differs from WeightWatcher's in two guards: the
    two-sided KS statistic (scipy's) and a tail of at least 10 eigenvalues.

    Why it matters
    Martin & Mahoney (JMLR 2021) find the ESD of trained layers heavy-tailed, alpha ≈ 2-6 for well
    trained ones; WeightWatcher reads alpha < 2 as over-trained and alpha > 6 as under-trained. The
    reading is contested for small layers (WeightWatcher issues #235, #307), and measured here it
    does not separate healthy from faulty: MLPs of width 128-512 trained with AdamW (weight decay
    0.1-0.3) to a good test loss give alpha as low as 1.17, briefly trained layers alpha > 6. So this
    check never fails on alpha and by default does not judge it: layers outside 2-6 are listed as
    notes, evidence for a person. A stable rank near 1 is robust: one direction carries nearly all
    of the layer (healthy trained layers measured here: 1.45 and up; a planted rank-one layer 1.00).

    Evidence
    Per analysed layer (all up to `max_layers`, then the worst): name, shape, alpha, ks, stable
    rank, n_eigs (eigenvalues used), truncated (top-q only), seconds; totals and seconds per
    layer; how many layers were too small or non-finite. Figures: alpha and stable rank per layer,
    and the tail of the worst layer's ESD (its CCDF) against the fitted power law. Cost on one CPU
    thread (benchmarks/spectral_cost.py): 0.25 s for a 1024² layer, 1.6 s for a 4096² one
    truncated to 256 values (18 s in full), with the same alpha when the tail is in the top 256.

    Fixes
    No weights fix: the advice is training-side (look for a vanishing path, too-high weight decay
    or far too long training; re-initialize the layer).

    Options
    enabled (False): run the check at all; the analysis costs an SVD per layer.
    warn_stable_rank (1.2): warn when a layer's stable rank is below this (rank one: 1; the top
        direction then carries over 83% of ‖W‖_F²).
    warn_alpha (None): warn when a layer's alpha is below this (e.g. 1.5; None: alpha is not judged).
    min_dim (32): analyse only matrices whose smaller dimension is at least this (fewer eigenvalues
        do not make a tail).
    full_svd_max (1024): all singular values when the smaller dimension is at most this.
    top_q (256): otherwise, the top this many singular values (randomized SVD).
    max_layers (200): layers listed in the metrics (the worst, when there are more).
    """

    slug = "spectral-shape"
    code = "MD016"
    title = "Spectral shape of the weights"
    needs = "weights"
    default_options = {
        "enabled": False, "warn_stable_rank": 1.2, "warn_alpha": None, "min_dim": 32,
        "full_svd_max": 1024, "top_q": 256, "max_layers": 200,
    }

    def matrices(self, weights: Weights) -> tuple[list[str], int]:
        """(names of the matrices to analyse, how many are too small)."""
        names, small = [], 0
        for layer in layers(weights):
            for name in layer.tensors.values() if layer.kind in KINDS else ():
                info = weights.info(name)
                if len(info.shape) < 2 or not is_float(info):
                    continue
                if min(info.shape[0], info.numel // max(info.shape[0], 1)) >= self.options["min_dim"]:
                    names.append(name)
                else:
                    small += 1
        return names, small

    def requires(self, weights: Weights) -> str | None:
        if not self.options["enabled"]:
            return OFF
        if not self.matrices(weights)[0]:
            return f"no linear or conv weight with both dimensions >= {self.options['min_dim']}"
        return None

    def badness(self, row: dict) -> float:
        """The lower the worse (ranks the layers to keep and picks the worst): stable rank and alpha to their bounds."""
        o = self.options
        return min(row["stable_rank"] / o["warn_stable_rank"], (row["alpha"] or np.inf) / (o["warn_alpha"] or WW_OVER))

    def analyse(self, name: str, matrix: torch.Tensor) -> tuple[dict, np.ndarray, PowerLawFit | None]:
        """One matrix (m, n): its row of metrics, its eigenvalues (ascending) and its power-law fit."""
        began = time.perf_counter()
        values, truncated = singular_values(matrix, full_max=self.options["full_svd_max"], top=self.options["top_q"])
        eigs = esd(values)  # (k,) ascending
        fit = fit_power_law(eigs)
        frobenius_sq = float(torch.linalg.vector_norm(matrix)) ** 2 if truncated else float(eigs.sum())
        row = {"name": name, "shape": list(matrix.shape), "alpha": fit and fit.alpha, "ks": fit and fit.ks,
               "n_tail": fit and fit.n_tail, "stable_rank": stable_rank(frobenius_sq, float(values[0])),
               "n_eigs": len(eigs), "truncated": truncated, "seconds": time.perf_counter() - began}
        return row, eigs, fit

    def measure(self, weights: Weights, ctx: CheckContext) -> Measurement:
        o = self.options
        names, small = self.matrices(weights)
        rows, nonfinite, worst, start = [], 0, None, time.perf_counter()
        for name in names:
            ctx.ensure_time(f"the SVD of {name}")
            matrix = as_matrix(weights.tensor(name))  # (m, n)
            if not bool(torch.isfinite(matrix).all()):  # the non-finite check reports these
                nonfinite += 1
                continue
            row, eigs, fit = self.analyse(name, matrix)
            row["shape"] = list(weights.info(name).shape)
            rows.append(row)
            if worst is None or self.badness(row) < self.badness(worst[0]):
                worst = (row, eigs, fit)  # only the worst layer's eigenvalues are kept, for its figure
        total = time.perf_counter() - start
        alphas = [r["alpha"] for r in rows if r["alpha"] is not None]
        worst_ids = {id(r) for r in sorted(rows, key=self.badness)[:o["max_layers"]]}
        kept = [r for r in rows if id(r) in worst_ids]  # (<= max_layers,) the worst, in the checkpoint's order
        metrics = {
            "layers": kept, "num_layers": len(rows), "num_listed": len(kept), "num_small": small,
            "num_nonfinite": nonfinite, "num_truncated": sum(r["truncated"] for r in rows),
            "truncated_layers": [r["name"] for r in kept if r["truncated"]], "top_q": o["top_q"],
            "total_seconds": total, "seconds_per_layer": total / len(rows) if rows else None,
            "median_alpha": statistics.median(alphas) if alphas else None,
            "min_stable_rank": min((r["stable_rank"] for r in rows), default=None),
            "worst_layer": worst and worst[0]["name"],
        }
        notes = self.readings(rows)
        if small:
            notes.append(f"{small} matrix/matrices with a dimension < {o['min_dim']} not analysed (too few eigenvalues)")
        if nonfinite:
            notes.append(f"{nonfinite} matrix/matrices with NaN or Inf values not analysed")
        return Measurement(metrics=metrics, figures=lambda: self.figures(kept, worst), notes=notes)

    @staticmethod
    def readings(rows: list[dict]) -> list[str]:
        """Notes naming the layers outside WeightWatcher's 2-6: evidence, not judged."""
        notes = []
        for reading, outside, common in (
                ("alpha < 2 (WeightWatcher's over-trained reading", lambda a: a < WW_OVER, "small layers trained with weight decay"),
                ("alpha > 6 (WeightWatcher's under-trained reading", lambda a: a > WW_UNDER, "small or briefly trained layers")):
            names = [r["name"] for r in rows if r["alpha"] is not None and outside(r["alpha"])]
            if names:
                notes.append(f"{len(names)} of {len(rows)} layer(s) have {reading}; common in healthy {common}): "
                             + ", ".join(names[:10]) + (" ..." if len(names) > 10 else ""))
        return notes

    def figures(self, rows: list[dict], worst: tuple | None) -> list[Figure]:
        o, labels = self.options, [r["name"] for r in rows]
        figures = [
            Figure("bar", "Power-law exponent alpha of each layer's ESD tail", {
                "labels": labels, "values": [r["alpha"] for r in rows], "ylabel": "alpha",
                "hlines": [*([{"y": o["warn_alpha"], "label": "warn"}] if o["warn_alpha"] else []),
                           {"y": WW_OVER, "label": "over-trained reading"}, {"y": WW_UNDER, "label": "under-trained reading"}]}),
            Figure("bar", "Stable rank ‖W‖_F²/‖W‖_2² of each layer", {
                "labels": labels, "values": [r["stable_rank"] for r in rows], "ylabel": "stable rank",
                "hlines": [{"y": o["warn_stable_rank"], "label": "warn"}]}),
        ]
        if worst is not None and worst[2] is not None:
            row, eigs, fit = worst
            tail = eigs[eigs >= fit.xmin]  # (n_tail,) ascending
            ccdf = 1.0 - np.arange(len(tail)) / len(tail)  # P(Λ >= λ) within the tail
            figures.append(Figure("line", f"ESD tail of {row['name']}: CCDF and the power law (alpha {fit.alpha:.2f})", {
                "series": [{"name": "eigenvalues of WᵀW", "x": tail.tolist(), "y": ccdf.tolist()},
                           {"name": "fitted power law", "x": tail.tolist(),
                            "y": (1.0 - power_law_cdf(tail, fit.alpha, fit.xmin)).tolist()}],
                "xlabel": "eigenvalue λ", "ylabel": "P(Λ ≥ λ | tail)", "logx": True, "logy": True}))
        return figures

    def judge(self, measurement: Measurement) -> list[Finding]:
        o, m = self.options, measurement.metrics
        found = []
        collapsed = [r for r in m["layers"] if r["stable_rank"] < o["warn_stable_rank"]]
        if collapsed:
            found.append(Finding("warn", "rank-collapse", f"{len(collapsed)} layer(s) essentially rank one: stable rank "
                                 + ", ".join(f"{r['stable_rank']:.2f} (`{r['name']}`)" for r in collapsed[:5])
                                 + f" < {o['warn_stable_rank']:g}", ("layers", "min_stable_rank"),
                                 advice=[ADVICE_RANK], where=[r["name"] for r in collapsed]))
        heavy = [r for r in m["layers"] if o["warn_alpha"] and r["alpha"] is not None and r["alpha"] < o["warn_alpha"]]
        if heavy:
            found.append(Finding("warn", "heavy-tail", f"{len(heavy)} layer(s) with a very heavy-tailed spectrum: alpha "
                                 + ", ".join(f"{r['alpha']:.2f} (`{r['name']}`)" for r in heavy[:5])
                                 + f" < {o['warn_alpha']:g}", ("layers", "median_alpha"),
                                 advice=[ADVICE_ALPHA], where=[r["name"] for r in heavy]))
        if found:
            return found
        median = "no tail fitted" if m["median_alpha"] is None else f"median alpha {m['median_alpha']:.2f}"
        return [Finding("pass", "healthy", f"{m['num_layers']} layer(s) analysed: lowest stable rank "
                        f"{m['min_stable_rank']:.2f}, {median}", ("min_stable_rank", "median_alpha", "seconds_per_layer"))]
