"""Per-tensor summaries of a checkpoint, computed in one chunked pass and shared by the weight checks.

`tensor_stats(weights, name)` reads a tensor once (in chunks of rows, so a half-precision tensor is
never converted to float32 whole) and keeps what the weight checks judge: non-finite counts, moments
of the finite values, the L2 norm of every output row (unit) and, for 2-D weights, of every input
column, and a small sample of values for distribution tests. The summary is memoized in
`weights.cache`, so the checks of one run read each tensor once between them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.evidence import Weights

CHUNK_ELEMENTS = 1 << 22  # 4M values (16 MB in float32) per chunk of rows
SAMPLE_SIZE = 20_000  # values kept for a KS test: enough to separate init from trained (D ~ 0.01 at p 1e-3)
SAMPLE_BLOCKS = 16  # the sample is this many contiguous blocks spread evenly over the tensor


@dataclass
class TensorStats:
    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    nan: int = 0
    inf: int = 0
    zeros: int = 0
    mean: float = 0.0  # of the finite values
    std: float = 0.0
    abs_max: float = 0.0
    row_norms: torch.Tensor | None = None  # (shape[0],) L2 norm of each output row / filter, for >= 2-D tensors
    col_norms: torch.Tensor | None = None  # (shape[1],) L2 norm of each input column, for 2-D tensors
    sample: np.ndarray | None = None  # (<= SAMPLE_SIZE,) finite float64 values

    @property
    def nonfinite(self) -> int:
        return self.nan + self.inf

    @property
    def floating(self) -> bool:
        return self.row_norms is not None or self.sample is not None


def _real_view(tensor: torch.Tensor) -> torch.Tensor:
    """Complex tensors as (…, 2) real ones, so NaN/Inf in either part is seen."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def _sample(flat: torch.Tensor, size: int = SAMPLE_SIZE, blocks: int = SAMPLE_BLOCKS) -> np.ndarray:
    """Evenly spread contiguous blocks: touches few memory pages of a mapped tensor, unlike random indices."""
    n = flat.numel()
    if n <= size:
        picked = flat
    else:
        block = size // blocks
        starts = np.linspace(0, n - block, blocks).astype(np.int64)
        picked = torch.cat([flat[start:start + block] for start in starts])
    values = picked.double().numpy()
    return values[np.isfinite(values)]


def compute_stats(name: str, tensor: torch.Tensor) -> TensorStats:
    """The summary of one tensor (see the module docstring).

    Few passes per chunk, all in float32 (float64 reductions cost 10x more on CPU): the row and column
    norms, the sum, the count of zeros, the min/max. A finite sum of squares proves the chunk finite;
    only a chunk that is not pays for counting its NaN and Inf values and for masking them out.
    """
    stats = TensorStats(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."), tensor.numel())
    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
        return stats
    tensor = _real_view(tensor.detach())
    rows = tensor.reshape(tensor.shape[0], -1) if tensor.dim() >= 1 else tensor.reshape(1, 1)  # (R, C)
    per_chunk = max(1, CHUNK_ELEMENTS // max(1, rows.shape[1]))
    total = total_sq = 0.0
    finite_count = 0
    abs_max = 0.0
    row_sq = []
    col_sq = torch.zeros(rows.shape[1], dtype=torch.float64) if tensor.dim() == 2 else None
    for start in range(0, rows.shape[0], per_chunk):
        chunk = rows[start:start + per_chunk].float()  # (r, C)
        chunk_rows = torch.linalg.vector_norm(chunk, dim=1)  # (r,)
        chunk_sq = float(chunk_rows.square().sum())
        if not math.isfinite(chunk_sq):  # NaN/Inf somewhere (or norms past float32): count and mask them
            finite = torch.isfinite(chunk)
            nan = int(torch.isnan(chunk).sum())
            stats.nan += nan
            stats.inf += int(chunk.numel() - int(finite.sum())) - nan
            chunk = torch.where(finite, chunk, torch.zeros((), dtype=chunk.dtype))
            chunk_rows = torch.linalg.vector_norm(chunk.double(), dim=1).float()
            chunk_sq = float(chunk_rows.double().square().sum())
            finite_count += int(finite.sum())
        else:
            finite_count += chunk.numel()
        stats.zeros += chunk.numel() - int(torch.count_nonzero(chunk))
        total += float(chunk.sum())  # float32 pairwise sums per chunk; the chunks add up in Python floats
        total_sq += chunk_sq
        low, high = torch.aminmax(chunk)
        abs_max = max(abs_max, abs(float(low)), abs(float(high)))
        row_sq.append(chunk_rows.double().square())
        if col_sq is not None:
            # a strided reduction down the columns is 8x slower than summing the squares with a matmul
            col_sq += (torch.ones(1, chunk.shape[0]) @ chunk.square())[0].double()
    if finite_count:
        stats.mean = total / finite_count
        stats.std = math.sqrt(max(total_sq / finite_count - stats.mean**2, 0.0))
    stats.abs_max = abs_max
    if tensor.dim() >= 2:
        stats.row_norms = torch.cat(row_sq).sqrt().float()
        stats.col_norms = None if col_sq is None else col_sq.sqrt().float()
    stats.sample = _sample(rows.reshape(-1))
    return stats


def tensor_stats(weights: Weights, name: str) -> TensorStats:
    """The memoized summary of tensor `name` of `weights`."""
    cache = weights.cache.setdefault("stats", {})
    if name not in cache:
        cache[name] = compute_stats(name, weights.tensor(name))
    return cache[name]


def all_stats(weights: Weights) -> list[TensorStats]:
    """The summaries of every tensor, in the checkpoint's order."""
    return [tensor_stats(weights, name) for name in weights.names()]
