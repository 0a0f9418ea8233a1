"""Pure numeric kernels: PSNR, trivial baselines, coverage, confidence intervals.

Each takes tensors or arrays and returns plain numbers; each is tested against a hand-computed value.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def psnr_db(mse: float, data_range: float = 1.0) -> float:
    """PSNR = 10·log10(R²/MSE); +inf for a perfect prediction."""
    if mse <= 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def mse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return float(torch.mean((prediction.double() - target.double()) ** 2))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows of logits (N, C) whose argmax equals the label (N,)."""
    return float((logits.argmax(-1) == labels).double().mean()) if len(labels) else math.nan


def variance_ratio(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Var(ŷ)/Var(y): ≪ 1 means the model regresses to the mean."""
    target_var = float(target.double().var())
    return float(prediction.double().var()) / target_var if target_var > 0 else math.nan


def pearson(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Pearson correlation of flattened predictions and targets (nan when either is constant)."""
    p = prediction.double().flatten() - prediction.double().mean()
    t = target.double().flatten() - target.double().mean()
    denom = float(p.norm() * t.norm())
    return float((p * t).sum()) / denom if denom > 0 else math.nan


def mean_row_correlation(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean Pearson correlation of matching rows of (N, L) tensors (rows with no variance skipped)."""
    p = prediction.double() - prediction.double().mean(1, keepdim=True)
    t = target.double() - target.double().mean(1, keepdim=True)
    denom = p.norm(dim=1) * t.norm(dim=1)
    valid = denom > 0
    return float(((p * t).sum(1)[valid] / denom[valid]).mean()) if bool(valid.any()) else math.nan


def label_entropy(labels: torch.Tensor, num_classes: int) -> float:
    """Entropy (nats) of the empirical label distribution: the loss of a model that learned only the prior."""
    probs = torch.bincount(labels.long(), minlength=num_classes).double() / max(len(labels), 1)
    probs = probs[probs > 0]
    return float(-(probs * probs.log()).sum())


def trivial_scores(kind: str, prediction: torch.Tensor, target: torch.Tensor, train_target: torch.Tensor,
                   num_classes: int | None = None) -> dict[str, float]:
    """One head's metrics next to those of the trivial predictor of its kind, fit on training targets.

    classification/tokens (logits (N, C), labels (N,)): loss vs the label-prior entropy, accuracy vs
    the majority class; signal ((N, L) rows): mean row correlation, relative L2 error;
    regression ((N,)): MAE vs predicting the training median, and correlation.
    """
    if kind in ("classification", "tokens"):
        majority = torch.mode(train_target).values
        return {
            "loss": float(torch.nn.functional.cross_entropy(prediction, target.long())),
            "prior_entropy": label_entropy(train_target, num_classes or int(prediction.shape[-1])),
            "accuracy": accuracy(prediction, target),
            "majority_accuracy": float((target == majority).double().mean()),
        }
    if kind == "signal":
        return {
            "correlation": mean_row_correlation(prediction, target),
            "relative_error": float((prediction - target).norm() / target.norm().clamp(min=1e-12)),
        }
    mae, median_mae = float((prediction - target).abs().mean()), float((train_target.median() - target).abs().mean())
    return {"mae": mae, "median_mae": median_mae, "mae_ratio": mae / median_mae if median_mae > 0 else math.inf,
            "correlation": pearson(prediction, target)}


def entropy(counts: torch.Tensor) -> float:
    """H = -Σ p_k ln p_k (nats) of the distribution p_k = n_k/Σn over counts or shares (K,); 0·ln 0 = 0."""
    p = counts[counts > 0].double()
    p = p / p.sum()
    return float(-(p * p.log()).sum())


def code_usage(counts: torch.Tensor) -> dict[str, float]:
    """Codebook statistics from hit counts n_k (K,) accumulated over all samples.

    usage = #{n_k > 0}/K; perplexity = exp(H), H = -Σ p_k ln p_k, p_k = n_k/N; dead codes = K - used;
    usage_ceiling = 1 - (1 - 1/K)^N, the usage N tokens drawn uniformly would reach on average.
    """
    k, total = len(counts), int(counts.sum())
    perplexity = math.exp(entropy(counts)) if total else 1.0
    used = int((counts > 0).sum())
    return {"num_codes": k, "tokens": total, "codes_used": used, "usage": used / k,
            "usage_ceiling": 1.0 - (1.0 - 1.0 / k) ** total, "perplexity": perplexity,
            "perplexity_ratio": perplexity / k, "dead_codes": k - used}


def expected_coverage(n_eval: int, n_train: int, k: int) -> float:
    """E[k-NN coverage] when train and eval queries come from one distribution.

    Naeem et al. (ICML 2020), Lemma 2: 1 - Π_{i=1..k} (N-i)/(N+M-i), N eval and M train samples.
    """
    product = 1.0
    for i in range(1, k + 1):
        product *= (n_eval - i) / (n_eval + n_train - i)
    return 1.0 - product


def expected_cell_coverage(cell_probs: np.ndarray, n_train: int) -> float:
    """E[fraction of eval mass on cells hit at least once] by `n_train` draws from the eval distribution.

    With eval distribution p over discrete cells, a cell is missed with probability (1-p)^M, so the
    expected covered eval mass is Σ p·(1-(1-p)^M).
    """
    p = np.asarray(cell_probs, dtype=float)
    return float(np.sum(p * (1.0 - (1.0 - p) ** n_train)))


def paired_interval(deltas: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of paired differences (same seeds in both arms)."""
    values = np.asarray(deltas, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return (math.nan, math.nan)
    from scipy import stats  # imported late: scipy.stats costs ~0.6 s at start-up

    sem = float(values.std(ddof=1)) / math.sqrt(len(values))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=len(values) - 1)) * sem
    return (mean - half, mean + half)
