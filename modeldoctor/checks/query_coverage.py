"""query-coverage: does training query the positions that evaluation asks about?"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from ..core.check import Check, CheckContext
from ..core.registry import register_check
from ..core.results import Figure, Finding, Measurement
from ..core.subject import Subject
from ..probes.numerics import expected_cell_coverage, expected_coverage


def gather_queries(subject: Subject, batches, max_batches: int) -> tuple[torch.Tensor, int]:
    """(all query coordinates (n, D), number of draws). A position repeated within a batch is one draw."""
    coords, draws = [], 0
    for batch in itertools.islice(batches, max_batches):
        batch_coords = subject.queries.coords(batch).reshape(-1, subject.queries.space.shape[-1]).float()  # (B*Q, D)
        coords.append(batch_coords)
        draws += len(torch.unique(batch_coords, dim=0))
    return torch.cat(coords), draws


def cell_index(coords: torch.Tensor, space: torch.Tensor, tolerance: float = 1e-5) -> torch.Tensor | None:
    """Index into `space` of each coordinate, or None when some coordinate is not a cell of the space."""
    unique, inverse = torch.unique(coords, dim=0, return_inverse=True)  # many queries repeat
    distance, index = torch.cdist(unique, space.float()).min(dim=1)
    return index[inverse] if bool((distance <= tolerance).all()) else None


@register_check
class QueryCoverage(Check):
    """Train/eval query mismatch: are evaluation positions ever queried during training?

    What it checks
    For query-based models (neural fields, masked modelling), it gathers the query positions of
    the training batches and of the evaluation batches and measures the coverage: the fraction
    of evaluation queries whose position was queried in training. On a discrete query space
    (pixels) a position is covered when training queried it at least `min_count` times; on
    continuous coordinates it uses k-NN coverage (Naeem et al., 2020). The coverage is compared
    with what drawing the same number of training queries from the evaluation distribution
    would give. It also reports the share of evaluation queries outside the training bounding
    box and a two-sample Kolmogorov-Smirnov test per coordinate (Bonferroni-corrected).

    Why it matters
    The seed's field model trained on the same 51 pixels every step (indices 0, 5, ..., 250) and
    was evaluated on all 1024: 95% of the positions were never queried, and there the model fell
    back to the mean (~6 dB PSNR). No amount of training fixes that; the sampler must change.

    Evidence
    Coverage and its same-distribution expectation, the out-of-bounding-box share, KS statistics,
    and maps of how often each position is queried in training and in evaluation.

    Fixes
    random-queries: sample fresh query positions from the whole query space every step.

    Options
    min_count (1): training queries a position needs to count as covered.
    warn_margin (0.02), fail_margin (0.10): how far below the expected coverage warns/fails.
    max_outside_bbox (0.01): fail when more evaluation queries than this lie outside the
        training bounding box (extrapolation).
    k (5): neighbours for k-NN coverage on continuous coordinates.
    max_batches (200): batches scanned from each of train and eval (no model is run).
    """

    slug = "query-coverage"
    code = "MD003"
    title = "Train/eval query coverage"
    fixes = ("random-queries",)
    default_options = {"min_count": 1, "warn_margin": 0.02, "fail_margin": 0.10, "max_outside_bbox": 0.01, "k": 5, "max_batches": 200, "max_points": 2000}

    def requires(self, subject: Subject) -> str | None:
        return None if subject.queries is not None else "the subject declares no query coordinates (capability `queries`)"

    def measure(self, subject: Subject, ctx: CheckContext) -> Measurement:
        space = subject.queries.space.float()  # (P, D)
        train, train_draws = gather_queries(subject, subject.train_batches, self.options["max_batches"])
        ctx.ensure_time("scanning training queries")
        evaluation, _ = gather_queries(subject, subject.eval_batches, self.options["max_batches"])
        train_cells, eval_cells = cell_index(train, space), cell_index(evaluation, space)
        images = None  # (train counts, eval counts, covered, grid) for the position maps, drawn on demand
        if train_cells is not None and eval_cells is not None:
            train_counts = torch.bincount(train_cells, minlength=len(space))
            eval_counts = torch.bincount(eval_cells, minlength=len(space))
            eval_probs = (eval_counts / eval_counts.sum()).numpy()
            covered = (train_counts >= self.options["min_count"]).numpy()
            coverage, expected = float(eval_probs[covered].sum()), expected_cell_coverage(eval_probs, train_draws)
            method = "cells"
            grid = subject.capabilities.grid_shape
            if grid:
                images = (train_counts, eval_counts, covered, grid)
        else:
            coverage, expected = self.knn_coverage(train, evaluation)
            method = "knn"
        low, high = train.min(0).values, train.max(0).values
        outside = float(((evaluation < low - 1e-6) | (evaluation > high + 1e-6)).any(dim=1).float().mean())
        ks = self.ks_per_dimension(train, evaluation)
        metrics = {
            "coverage": coverage,
            "expected_coverage": expected,
            "method": method,
            "outside_train_bbox": outside,
            "ks_d_max": max(d for d, _ in ks),
            "ks_p_min_bonferroni": min(p for _, p in ks),
            "train_queries": int(len(train)),
            "train_draws": int(train_draws),
            "train_unique_positions": int(len(torch.unique(train, dim=0))),
            "eval_queries": int(len(evaluation)),
            "eval_unique_positions": int(len(torch.unique(evaluation, dim=0))),
        }
        return Measurement(metrics=metrics, figures=lambda: self.figures(images, coverage, expected))

    def figures(self, images, coverage: float, expected: float) -> list[Figure]:
        figures = []
        if images is not None:
            train_counts, eval_counts, covered, grid = images
            figures.append(Figure("images", "How often each position is queried", {"images": [
                {"label": "training", "pixels": (train_counts / train_counts.max()).reshape(grid).tolist()},
                {"label": "evaluation", "pixels": (eval_counts / eval_counts.max()).reshape(grid).tolist()},
                {"label": "never queried in training", "pixels": (~covered).astype(float).reshape(grid).tolist()},
            ], "vmin": 0.0, "vmax": 1.0, "cmap": "magma"}))
        figures.append(Figure("bar", "Coverage of evaluation queries", {
            "labels": ["observed", "expected (same distribution)"], "values": [coverage, expected], "ylabel": "coverage",
        }))
        return figures

    def knn_coverage(self, train: torch.Tensor, evaluation: torch.Tensor) -> tuple[float, float]:
        """Naeem et al. coverage: eval points whose k-NN ball (among eval points) holds a train point."""
        generator = torch.Generator().manual_seed(0)
        n = self.options["max_points"]
        train = train[torch.randperm(len(train), generator=generator)[:n]]
        evaluation = evaluation[torch.randperm(len(evaluation), generator=generator)[:n]]
        k = min(self.options["k"], len(evaluation) - 1)
        radius = torch.cdist(evaluation, evaluation).kthvalue(k + 1, dim=1).values  # (N,), +1 skips self
        nearest_train = torch.cdist(evaluation, train).min(dim=1).values
        return float((nearest_train <= radius).float().mean()), expected_coverage(len(evaluation), len(train), k)

    def ks_per_dimension(self, train: torch.Tensor, evaluation: torch.Tensor) -> list[tuple[float, float]]:
        from scipy import stats  # imported late: scipy.stats costs ~0.6 s at start-up

        rng = np.random.default_rng(0)
        n, dims = self.options["max_points"], train.shape[1]
        a = train.numpy()[rng.permutation(len(train))[:n]]
        b = evaluation.numpy()[rng.permutation(len(evaluation))[:n]]
        results = []
        for d in range(dims):
            test = stats.ks_2samp(a[:, d], b[:, d])
            results.append((float(test.statistic), min(1.0, float(test.pvalue) * dims)))
        return results

    def judge(self, measurement: Measurement) -> list[Finding]:
        """One finding: uncovered or extrapolated evaluation queries fail; a smaller shortfall or a shift warns."""
        m, o = measurement.metrics, self.options
        rests_on = ("coverage", "expected_coverage", "outside_train_bbox")
        said = (f"training queried {m['coverage']:.1%} of evaluation positions "
                f"(same-distribution sampling gives {m['expected_coverage']:.1%}); "
                f"{m['outside_train_bbox']:.1%} of evaluation queries lie outside the training range")
        short = m["coverage"] < m["expected_coverage"] - o["fail_margin"]
        if short or m["outside_train_bbox"] > o["max_outside_bbox"]:
            return [Finding("fail", "uncovered" if short else "extrapolation",
                            f"evaluation asks about positions training never queried: {said}", rests_on, self.fixes)]
        short = m["coverage"] < m["expected_coverage"] - o["warn_margin"]
        if short or (m["ks_p_min_bonferroni"] < 0.05 and m["ks_d_max"] > 0.1):
            return [Finding("warn", "undercovered" if short else "shifted",
                            f"training and evaluation queries differ: {said}; KS D={m['ks_d_max']:.2f}",
                            rests_on + ("ks_d_max", "ks_p_min_bonferroni"), self.fixes)]
        return [Finding("pass", "covered", f"training covers the evaluation queries: {said}", rests_on)]
