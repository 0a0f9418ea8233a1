"""Initialization fingerprints: the distributions layers start from, and how close a tensor still is to one.

`candidates(shape, ...)` lists the initializations a weight of that shape commonly starts from: the
PyTorch defaults (`nn.Linear`/`nn.Conv*` kaiming_uniform with a=√5, i.e. U(±1/√fan_in); `nn.Embedding`
N(0, 1); `nn.MultiheadAttention.in_proj_weight` xavier_uniform; `nn.RNN/GRU/LSTM` U(±1/√hidden)) and
the common library ones (N(0, 0.02) or a Hugging Face `initializer_range`, truncated normal at ±2σ,
xavier and kaiming uniform/normal). `match_init` runs a one-sample Kolmogorov-Smirnov test of a
tensor's sample against each and keeps the closest (`InitMatch.std_z` then tests its std over all
values); `norm_dispersion_p` tests whether its row and column norms spread as iid entries make them.
`is_constant`, `relative_change` and `compare_to_base` are the exact tests: norm layers start
constant, and a tensor that equals its `--against` base never trained.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import special, stats

from ..core.evidence import Weights
from .weight_layout import BUFFER_LEAVES, fans, is_float, layer_of, layers, split_name
from .weight_stats import CHUNK_ELEMENTS, TensorStats

Cdf = Callable[[np.ndarray], np.ndarray]


# Variance and kurtosis of N(0, 1) cut at ±2 (scipy.stats.truncnorm(-2, 2).stats("vk"), kurtosis not excess).
TRUNC2_VAR, TRUNC2_KURTOSIS = 0.7737413, 3 - 0.6344633


@dataclass(frozen=True)
class InitCandidate:
    label: str  # "U(±0.125) PyTorch default": the distribution, then where it comes from
    cdf: Cdf
    std: float  # of the distribution
    kurtosis: float  # E[x⁴]/σ⁴: 1.8 uniform, 3 normal


@dataclass(frozen=True)
class InitMatch:
    init: str  # the closest candidate's label
    d: float  # KS statistic: the largest gap between the sample's CDF and the candidate's
    p: float  # KS p-value of the sample against that candidate
    n: int  # sample size
    candidate: InitCandidate

    def std_z(self, std: float, numel: int) -> float:
        """How many standard errors a tensor's std (over all `numel` values) is from the candidate's.

        Under the candidate, the sample std has standard error σ·√((κ − 1) / 4N) (κ its kurtosis).
        """
        error = self.candidate.std * math.sqrt((self.candidate.kurtosis - 1) / (4 * max(numel, 1)))
        return abs(std - self.candidate.std) / error


def uniform(bound: float, source: str) -> InitCandidate:
    return InitCandidate(f"U(±{bound:.3g}) {source}", lambda x: np.clip((x + bound) / (2 * bound), 0.0, 1.0),
                         bound / math.sqrt(3), 1.8)


def normal(std: float, source: str) -> InitCandidate:
    return InitCandidate(f"N(0, {std:.3g}) {source}", lambda x: special.ndtr(x / std), std, 3.0)


def truncated_normal(std: float, source: str) -> InitCandidate:
    """N(0, std) cut at ±2·std (torch.nn.init.trunc_normal_(std=s, a=-2s, b=2s))."""
    low, mass = special.ndtr(-2.0), special.ndtr(2.0) - special.ndtr(-2.0)
    return InitCandidate(f"truncated N(0, {std:.3g}) at ±2σ {source}",
                         lambda x: np.clip((special.ndtr(x / std) - low) / mass, 0.0, 1.0),
                         std * math.sqrt(TRUNC2_VAR), TRUNC2_KURTOSIS)


def candidates(shape: tuple[int, ...], init_range: float | None = None, hidden: int | None = None) -> list[InitCandidate]:
    """The initializations a weight of `shape` (2-D or more) commonly starts from.

    init_range: a Hugging Face config's `initializer_range` (N(0, r) is tried besides N(0, 0.02)).
    hidden: the hidden size of a recurrent layer (its weights start from U(±1/√hidden)).
    """
    fan_in, fan_out = fans(shape)
    found = [
        uniform(1 / math.sqrt(fan_in), "PyTorch default (kaiming_uniform a=√5)"),
        uniform(math.sqrt(6 / (fan_in + fan_out)), "xavier_uniform"),
        normal(math.sqrt(2 / (fan_in + fan_out)), "xavier_normal"),
        uniform(math.sqrt(6 / fan_in), "kaiming_uniform (relu)"),
        normal(math.sqrt(2 / fan_in), "kaiming_normal (relu, fan_in)"),
        normal(math.sqrt(2 / fan_out), "kaiming_normal (relu, fan_out)"),
        normal(1.0, "nn.Embedding default"),
    ]
    for std in dict.fromkeys(r for r in (0.02, init_range) if r):
        found += [normal(std, "GPT-2/BERT initializer_range"), truncated_normal(std, "timm/ViT")]
    if hidden:
        found.insert(0, uniform(1 / math.sqrt(hidden), "PyTorch RNN default"))
    return found


def ks_distance(ordered: np.ndarray, cdf: Cdf) -> float:
    """The KS statistic of a sorted sample against `cdf` (what scipy.stats.kstest computes, vectorized)."""
    n = len(ordered)
    f = cdf(ordered)
    return float(max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max()))


def match_init(sample: np.ndarray, options: list[InitCandidate]) -> InitMatch:
    """The candidate closest to the sample (smallest KS D), with scipy's KS test against it.

    Past a few thousand values the asymptotic p-value is as good as the exact one, which costs
    20 ms per test at the sample size of `weight_stats` (most of a checkpoint scan's time).
    """
    ordered = np.sort(sample)
    # A candidate whose std is off by 2x or more is never the closest while one within 2x exists (its D
    # is large), so only those are compared; this halves the cost of a scan.
    spread = float(ordered.std()) or 1e-12
    near = [c for c in options if 0.5 < c.std / spread < 2.0]
    pool = near or [min(options, key=lambda c: abs(math.log(max(c.std, 1e-12) / spread)))]
    distance, best = min(((ks_distance(ordered, c.cdf), c) for c in pool), key=lambda pair: pair[0])
    n = len(ordered)
    if n <= 2000:
        return InitMatch(best.label, distance, float(stats.kstest(ordered, best.cdf, method="exact").pvalue), n, best)
    # the same D scipy's kstest gives; its asymptotic p-value (Kolmogorov's distribution), without redoing the sort
    return InitMatch(best.label, distance, float(stats.kstwobign.sf(distance * math.sqrt(n))), n, best)


def norm_dispersion_p(st: TensorStats) -> float:
    """p-value that the row (and column) norms vary as much as, and no more than, iid values make them.

    At init every entry is drawn independently, so a row's squared norm is a sum of k iid x² with
    variance k·Var(x²); training gives units (rows) and inputs (columns) their own scales, so
    trained weights spread their norms more, or less, than that even when their histogram still
    looks like an init. A χ² test of the variance of the squared norms (degrees of freedom
    corrected for the kurtosis of x² and for Var(x²) being estimated from the sample), two-sided,
    Bonferroni over rows and columns.
    """
    y = np.square(st.sample)  # (n,) x² of the sampled values
    var = float(y.var())
    if var <= 0 or st.row_norms is None:
        return 1.0
    kurtosis = float(np.mean((y - y.mean()) ** 4)) / var**2 - 3  # excess kurtosis of x²
    found = []
    for norms, k in ((st.row_norms, st.numel // st.shape[0]), (st.col_norms, st.shape[0])):
        if norms is None or len(norms) < 8:
            continue
        squared = norms.double().numpy() ** 2  # (m,)
        m = len(squared)
        # relative variance of the ratio: the rows' own sampling, plus the error of Var(x²) estimated from the sample
        df = 2 / max(2 / (m - 1) + kurtosis / (k * m) + (kurtosis + 2) / len(y), 1e-12)
        tail = stats.chi2.cdf(squared.var(ddof=1) / (k * var) * df, df)
        found.append(2 * min(tail, 1 - tail))
    return min(1.0, min(found) * len(found)) if found else 1.0


def is_constant(stats_: TensorStats, value: float | None = None) -> bool:
    """Every element equal (to `value` when given), judged from the exact moments of the full tensor.

    With |x| ≤ abs_max everywhere, mean = ±abs_max holds only when every element equals the mean.
    """
    if not stats_.floating or stats_.nonfinite or stats_.numel < 2:
        return False
    constant = stats_.abs_max == abs(stats_.mean)
    return constant and (value is None or stats_.mean == value)


def coarser(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """The dtype of lower precision, so that a frozen tensor saved in another precision still compares equal."""
    return a if torch.finfo(a).eps >= torch.finfo(b).eps else b


def relative_change(current: torch.Tensor, base: torch.Tensor) -> float:
    """‖W − W0‖ / ‖W0‖, in chunks of rows, both rounded to the coarser dtype; inf when W0 = 0 ≠ W."""
    dtype = coarser(current.dtype, base.dtype)
    rows_w, rows_b = current.reshape(current.shape[0] if current.dim() else 1, -1), base.reshape(base.shape[0] if base.dim() else 1, -1)
    per_chunk = max(1, CHUNK_ELEMENTS // max(1, rows_w.shape[1]))
    diff_sq = base_sq = 0.0
    for start in range(0, rows_w.shape[0], per_chunk):
        w = rows_w[start:start + per_chunk].to(dtype).double()  # (r, C)
        w0 = rows_b[start:start + per_chunk].to(dtype).double()
        diff_sq += float((w - w0).square().sum())
        base_sq += float(w0.square().sum())
    if base_sq == 0:
        return 0.0 if diff_sq == 0 else math.inf
    return math.sqrt(diff_sq / base_sq)


def compare_to_base(weights: Weights, base: Weights, rtol: float, listed: int = 100) -> tuple[dict, dict[str, float]]:
    """Each float parameter's relative change from `base` (`--against`), read pair by pair; buffers skipped.

    Returns (summary, changes): changes maps tensor name -> ‖W − W0‖/‖W0‖; the summary counts tensors
    compared / changed / unchanged (change ≤ rtol), missing from the base or of another shape, and lists
    (at most `listed` each) the unchanged ones, split into parameters of a known layer kind and others
    (which may be buffers that never train, such as a sinusoidal position table).
    """
    present, kinds = set(base.names()), {name: layer.kind for layer in layers(weights) for name in layer.tensors.values()}
    changes, missing, mismatched = {}, [], []
    for name in weights.names():
        info = weights.info(name)
        if not is_float(info) or split_name(name)[1] in BUFFER_LEAVES:
            continue
        if name not in present:
            missing.append(name)
        elif tuple(base.info(name).shape) != tuple(info.shape) or not is_float(base.info(name)):
            mismatched.append((name, f"{list(info.shape)} vs base {list(base.info(name).shape)} {base.info(name).dtype}"))
        else:
            changes[name] = relative_change(weights.tensor(name), base.tensor(name))
    unchanged = [name for name, change in changes.items() if change <= rtol]
    known = [name for name in unchanged if kinds.get(name, "other") != "other"]
    smallest = min(changes, key=changes.get) if changes else None
    return {"compared": len(changes), "changed": len(changes) - len(unchanged), "unchanged": len(unchanged),
            "unchanged_tensors": known[:listed], "unchanged_other": [n for n in unchanged if n not in known][:listed],
            "unchanged_layers": list(dict.fromkeys(layer_of(n) for n in known))[:listed],
            "missing": len(missing), "missing_tensors": missing[:listed], "mismatched": len(mismatched),
            "mismatched_tensors": [name for name, _ in mismatched[:listed]],
            "mismatched_shapes": [f"{name} {shapes}" for name, shapes in mismatched[:listed]],
            "median_change": float(np.median(list(changes.values()))) if changes else None,
            "smallest_change": {"tensor": smallest, "value": changes[smallest]} if smallest else None}, changes
