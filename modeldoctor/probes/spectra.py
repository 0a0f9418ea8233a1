"""Spectral kernels for one weight matrix: its singular values, a power-law fit to its ESD tail, stable rank.

The empirical spectral density (ESD) of a weight W (m, n) is the distribution of the eigenvalues of
WᵀW, which are the squared singular values of W (the min(m, n) nonzero ones). Martin & Mahoney
(JMLR 2021) fit a power law p(λ) ∝ λ^(−α) to its upper tail, as WeightWatcher does with the `powerlaw`
package; `fit_power_law` is that fit: the continuous MLE α = 1 + n / Σ ln(λ_i / λ_min) (Clauset,
Shalizi & Newman 2009, eq. 3.1), with λ_min the candidate that minimizes the KS distance between
the tail and the fitted law. Each function is pure and tested against a hand value or a known law.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

MIN_TAIL = 10  # the fewest eigenvalues a power-law tail is fitted to (the KS distance of fewer is noise)
CHUNK = 256  # candidate λ_min values whose KS distances are computed in one (chunk, n) block


def as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """A weight as a float32 matrix: (out, in) stays, conv (out, in/groups, *k) becomes (out, in/groups·∏k)."""
    return tensor.detach().reshape(tensor.shape[0], -1).float()


def singular_values(matrix: torch.Tensor, *, full_max: int = 1024, top: int = 256,
                    oversample: int = 32, niter: int = 4) -> tuple[torch.Tensor, bool]:
    """(σ descending, truncated): all min(m, n) of them when min(m, n) <= full_max, else the top `top`.

    The top values come from `torch.svd_lowrank` with `oversample` extra directions and `niter` power
    iterations (the last values of a randomized SVD are the least accurate; the extra ones are dropped).
    It draws from torch's global generator: seed it for a reproducible result.
    """
    if min(matrix.shape) <= full_max or top + oversample >= min(matrix.shape):
        tall = matrix.T if matrix.shape[0] < matrix.shape[1] else matrix  # same σ; LAPACK is ~4x faster on tall
        return torch.linalg.svdvals(tall), False
    _, values, _ = torch.svd_lowrank(matrix, q=top + oversample, niter=niter)
    return values.sort(descending=True).values[:top], True


def esd(values: torch.Tensor) -> np.ndarray:
    """Eigenvalues of WᵀW from the singular values of W: λ = σ², ascending, float64."""
    return np.sort(values.double().numpy() ** 2)


def stable_rank(frobenius_sq: float, top_singular: float) -> float:
    """‖W‖_F² / ‖W‖_2²: between 1 (rank one) and rank(W); nan for a zero matrix."""
    return frobenius_sq / top_singular**2 if top_singular > 0 else math.nan


@dataclass(frozen=True)
class PowerLawFit:
    alpha: float  # the tail exponent of p(λ) ∝ λ^(−α)
    xmin: float  # where the tail starts
    ks: float  # KS distance between the tail's empirical CDF and the fitted law's
    n_tail: int  # eigenvalues at or above xmin


def power_law_alpha(tail: np.ndarray, xmin: float) -> float:
    """Continuous MLE of α for the values >= xmin: 1 + n / Σ ln(x_i / xmin)."""
    tail = tail[tail >= xmin]
    logs = np.log(tail / xmin).sum()
    return 1.0 + len(tail) / logs if logs > 0 else math.inf


def power_law_cdf(x: np.ndarray, alpha: float, xmin: float) -> np.ndarray:
    """P(X <= x) of the continuous power law with exponent alpha above xmin."""
    return 1.0 - (np.asarray(x, dtype=np.float64) / xmin) ** (1.0 - alpha)


def fit_power_law(eigenvalues: np.ndarray, min_tail: int = MIN_TAIL) -> PowerLawFit | None:
    """The power-law fit of the tail whose λ_min minimizes the KS distance; None with fewer than `min_tail` values.

    Every value with at least `min_tail` values at or above it is a candidate λ_min (as the `powerlaw`
    package does, which stops one value short). For candidate i of the n sorted values, with tail
    x_i..x_{n−1} (m = n − i values), α_i = 1 + m / (S_i − m ln x_i) (S_i the suffix sum of ln x) and
    D_i = max_k max(k/m − F(x_k), F(x_k) − (k−1)/m), the two-sided KS statistic of scipy.stats.kstest.
    """
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    x = x[x > x[-1] * 1e-12] if len(x) and x[-1] > 0 else x[:0]  # drop numerical zeros: ln 0
    n = len(x)
    if n < min_tail:
        return None
    logs = np.log(x)
    suffix = np.cumsum(logs[::-1])[::-1]  # (n,) S_i = Σ_{j >= i} ln x_j
    candidates = np.arange(n - min_tail + 1)  # (c,)
    m = (n - candidates).astype(np.float64)
    spread = suffix[candidates] - m * logs[candidates]  # Σ ln(x_j / x_i) over the tail
    alphas = np.where(spread > 0, 1.0 + m / np.where(spread > 0, spread, 1.0), np.inf)
    ks = np.full(len(candidates), np.inf)
    j = np.arange(n)
    for start in range(0, len(candidates), CHUNK):
        i = candidates[start:start + CHUNK, None]  # (b, 1)
        a, mm = alphas[start:start + CHUNK, None], m[start:start + CHUNK, None]
        inside = j[None, :] >= i  # (b, n) the tail of each candidate
        k = (j[None, :] - i + 1).astype(np.float64)  # rank within the tail, 1-based
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            cdf = 1.0 - np.exp((1.0 - a) * (logs[None, :] - logs[i]))  # (b, n)
            gap = np.maximum(k / mm - cdf, cdf - (k - 1) / mm)
        worst = np.where(inside, gap, -np.inf).max(axis=1)  # (b,)
        ks[start:start + CHUNK] = np.where(np.isfinite(a[:, 0]), worst, np.inf)
    best = int(np.argmin(ks))  # the first of ties: the longest tail
    if not math.isfinite(ks[best]):
        return None
    return PowerLawFit(float(alphas[best]), float(x[best]), float(ks[best]), int(m[best]))
