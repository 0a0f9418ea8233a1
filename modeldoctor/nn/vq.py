"""A small reference vector quantizer and scalar binning that follow the codebook-fix protocol.

The codebook fixes (`codebook-reset`, `codebook-resize`) act on the module a `Codec` names in
`Codec.module`. A codec is fixable when:

1. `Codec.module` names a submodule M of `subject.model` with methods `encode(x) -> codes` and
   `decode(codes) -> x̂`, and the codec's callables are exactly those bound methods
   (`Codec(encode=model.tok.encode, decode=model.tok.decode, module="tok", ...)`). The fixes
   rebind them to the patched copy of M, so never wrap them in a lambda.
2. The codebook is held by M or a submodule of M (the first found: the quantizer Q) as an attribute named
   `codebook`, `embedding` or `_embedding`: an `nn.Embedding` or a 2-D tensor
   (Parameter or buffer) with `Codec.num_codes` rows, one code per row (K, D).
3. Q receives the latents it quantizes, with the code dimension last (..., D), as the first
   argument of `Q.encode(z)` or `Q(z)` while the codec encodes (the fixes record them there).

Optional: Q reads `restart_dead_codes` (bool) and `dead_code_threshold` (float) in training to
restart dead codes; Q lists buffers with one entry per code in `per_code_buffers` (resized with
the codebook); Q and M keep their size in an int attribute `num_codes` (updated on resize).

`VectorQuantizer`, `PatchTokenizer` and `ScalarBinning` below are minimal implementations.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.subject import Codec

CODEBOOK_NAMES = ("codebook", "embedding", "_embedding")


@torch.no_grad()
def nearest_code(z: torch.Tensor, codebook: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index of the nearest row of `codebook` (K, D) for each row of `z` (N, D), in chunks of rows."""
    parts = [torch.cdist(z[i : i + chunk].float(), codebook.float()).argmin(-1) for i in range(0, len(z), chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means on rows of x (N, D) -> centres (k, D); empty clusters restart at random points."""
    x = x.float()
    draw = lambda n: torch.randint(len(x), (n,), generator=generator)
    first = torch.randperm(len(x), generator=generator)[:k] if len(x) >= k else draw(k)
    centres = x[first].clone()  # (k, D)
    for _ in range(iters):
        assign = nearest_code(x, centres)  # (N,)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)  # (k, 1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), x[draw(k)])
    return centres


class VectorQuantizer(nn.Module):
    """Nearest-neighbour VQ (van den Oord et al., 2017) with a straight-through estimator.

    forward(z (..., D)) -> (z_q (..., D) with straight-through gradients, codes (...), loss), where
    loss = ||sg(z) - e||² + beta·||z - sg(e)||² (codebook + commitment, beta = 0.25).
    With `restart_dead_codes` in training mode, codes whose EMA hit count per batch (decay 0.99)
    is below `dead_code_threshold` are re-drawn from the batch's latents (Jukebox random restarts).
    The codebook starts uniform in ±1/K, a common default that collapses on data far from 0.
    """

    per_code_buffers = ("usage",)

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, restart_dead_codes: bool = False,
                 dead_code_threshold: float = 1.0, decay: float = 0.99):
        super().__init__()
        self.num_codes, self.dim, self.beta, self.decay = num_codes, dim, beta, decay
        self.restart_dead_codes, self.dead_code_threshold = restart_dead_codes, dead_code_threshold
        self.embedding = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_codes, 1.0 / num_codes)
        self.register_buffer("usage", torch.ones(num_codes), persistent=False)  # EMA hits per batch

    def encode(self, z: torch.Tensor) -> torch.Tensor:  # (..., D) -> (...)
        return nearest_code(z.reshape(-1, self.dim), self.embedding.weight).reshape(z.shape[:-1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (...) -> (..., D)
        return self.embedding(codes)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes = self.encode(z)
        e = self.embedding(codes)  # (..., D)
        loss = F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())
        if self.training and self.restart_dead_codes:
            self.restart(z.detach().reshape(-1, self.dim), codes.reshape(-1))
        return z + (e - z).detach(), codes, loss

    @torch.no_grad()
    def restart(self, latents: torch.Tensor, codes: torch.Tensor) -> None:
        """Update the EMA hit counts and move dead codes onto random latents (N, D) of this batch."""
        counts = torch.bincount(codes, minlength=self.num_codes).to(self.usage.dtype)
        self.usage.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        dead = self.usage < self.dead_code_threshold
        if dead.any() and len(latents):
            rows = torch.randint(len(latents), (int(dead.sum()),), device=latents.device)
            self.embedding.weight[dead] = latents[rows].to(self.embedding.weight.dtype)

    @torch.no_grad()
    def init_kmeans(self, latents: torch.Tensor, iters: int = 10, generator: torch.Generator | None = None) -> None:
        """k-means initialisation of the codebook from latents (..., D) (SoundStream; `kmeans_init`)."""
        centres = kmeans(latents.reshape(-1, self.dim), self.num_codes, iters, generator)
        self.embedding.weight.copy_(centres)


class PatchTokenizer(nn.Module):
    """Tokenizer that cuts images (B, H, W) or signals (B, L) into patches and quantizes each one.

    encode(x) -> codes (B, H/p, W/p) or (B, L/p); decode(codes) -> x̂ shaped like x. H, W, L must be
    multiples of the patch size p. `fit(x)` k-means-initialises the codebook from x's patches.
    """

    def __init__(self, num_codes: int, patch: int, dims: int = 2):
        super().__init__()
        self.patch, self.dims = patch, dims
        self.quantizer = VectorQuantizer(num_codes, patch**dims)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        if self.dims == 1:
            return x.reshape(x.shape[0], -1, p)  # (B, L/p, p)
        b, h, w = x.shape
        return x.reshape(b, h // p, p, w // p, p).permute(0, 1, 3, 2, 4).reshape(b, h // p, w // p, p * p)

    def unpatch(self, z: torch.Tensor) -> torch.Tensor:
        p = self.patch
        if self.dims == 1:
            return z.reshape(z.shape[0], -1)  # (B, L)
        b, h, w, _ = z.shape
        return z.reshape(b, h, w, p, p).permute(0, 1, 3, 2, 4).reshape(b, h * p, w * p)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.encode(self.patches(x))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.unpatch(self.quantizer.decode(codes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_q, codes, loss = self.quantizer(self.patches(x))
        return self.unpatch(z_q), codes, loss

    def fit(self, x: torch.Tensor, iters: int = 10) -> PatchTokenizer:
        self.quantizer.init_kmeans(self.patches(x), iters)
        return self

    def codec(self, samples: Iterable[torch.Tensor], module: str, value_range: tuple[float, float] | None = None) -> Codec:
        """The Codec of this tokenizer, registered in the model under the qualified name `module`."""
        kind = "signal" if self.dims == 1 else "image"
        return Codec(kind=kind, encode=self.encode, decode=self.decode, num_codes=self.quantizer.num_codes,
                     samples=samples, value_range=value_range, module=module)


@dataclass
class ScalarBinning:
    """Uniform binning of scalars over [low, high] into `bins` bins; decode returns the bin centre.

    Values outside the range saturate to the first/last bin. A correct round trip lands within
    half a bin, and its PSNR over the range is 10·log10(12·bins²) (uniform quantization noise Δ²/12).
    """

    low: float
    high: float
    bins: int

    @property
    def bin_width(self) -> float:
        return (self.high - self.low) / self.bins

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor((x - self.low) / self.bin_width).clamp(0, self.bins - 1).long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.low + (codes.float() + 0.5) * self.bin_width

    def codec(self, samples: Iterable[torch.Tensor]) -> Codec:
        return Codec(kind="scalar", encode=self.encode, decode=self.decode, num_codes=self.bins, samples=samples,
                     bin_width=self.bin_width, value_range=(self.low, self.high))


# ---------------------------------------------------------------- the protocol, for the codebook fixes
