"""Initialization fingerprints: the distributions layers start from, and how close a tensor still is to one.

`candidates(shape, ...)` lists the initializations a weight of that shape commonly starts from: the
PyTorch defaults (`nn.Linear`/`nn.Conv*` kaiming_uniform with a=√5, i.e. U(±1/√fan_in); `nn.Embedding`
N(0, 1); `nn.MultiheadAttention.in_proj_weight` xavier_uniform; `nn.RNN/GRU/LSTM` U(±1/√hidden)) and
the common library ones (N(0, 0.02) or a Hugging Face `initializer_range`, truncated normal at ±2σ,
xavier and kaiming uniform/normal). `match_init` runs a one-sample Kolmogorov-Smirnov test of a
tensor's sample against each and keeps the closest. `is_constant` and `relative_change` are the exact
tests: norm layers start constant, and a tensor that equals its `--against` base never trained.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import special, stats

from .weight_layout import fans
from .weight_stats import CHUNK_ELEMENTS, TensorStats

Cdf = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class InitCandidate:
    label: str  # "U(±0.125) PyTorch default": the distribution, then where it comes from
    cdf: Cdf


@dataclass(frozen=True)
class InitMatch:
    init: str  # the closest candidate's label
    d: float  # KS statistic: the largest gap between the sample's CDF and the candidate's
    p: float  # KS p-value of the sample against that candidate
    n: int  # sample size


def uniform(bound: float, source: str) -> InitCandidate:
    return InitCandidate(f"U(±{bound:.3g}) {source}", lambda x: np.clip((x + bound) / (2 * bound), 0.0, 1.0))


def normal(std: float, source: str) -> InitCandidate:
    return InitCandidate(f"N(0, {std:.3g}) {source}", lambda x: special.ndtr(x / std))


def truncated_normal(std: float, source: str, cut: float = 2.0) -> InitCandidate:
    """N(0, std) cut at ±cut·std (torch.nn.init.trunc_normal_(std=s, a=-2s, b=2s))."""
    low, mass = special.ndtr(-cut), special.ndtr(cut) - special.ndtr(-cut)
    return InitCandidate(f"truncated N(0, {std:.3g}) at ±{cut:g}σ {source}",
                         lambda x: np.clip((special.ndtr(x / std) - low) / mass, 0.0, 1.0))


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
    """The candidate closest to the sample (smallest KS D), with scipy's KS test against it."""
    ordered = np.sort(sample)
    best = min(options, key=lambda candidate: ks_distance(ordered, candidate.cdf))
    result = stats.kstest(ordered, best.cdf)
    return InitMatch(best.label, float(result.statistic), float(result.pvalue), len(ordered))


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
