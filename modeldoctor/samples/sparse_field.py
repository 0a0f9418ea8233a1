"""Sample patient `sparse-field` (seed 003): sparse-to-dense field reconstruction.

A 32×32 field in [0, 1] is observed at 51 random pixels (5%). A small transformer encodes the
observations; queries are Fourier features of pixel coordinates that cross-attend to them and
predict the field value there.

Failing variant (the seed's bug): every training step queries the same 51 pixels, flat indices
0, 5, ..., 250 (the top eight rows), while evaluation queries all 1024. Most of the field is never
queried in training, and the model predicts little better than the mean there.
Healthy variant (`--healthy`): each step queries 64 pixels drawn afresh from the whole field.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core.capabilities import Capabilities
from ..core.registry import register_subject
from ..core.subject import QuerySpace, Recipe, Subject, Task
from . import Sample, register_sample

DEFAULTS = {
    "size": 32,
    "n_observed": 51,
    "n_train_fields": 2048,
    "n_eval_fields": 128,
    "batch_size": 16,
    "train_queries": "fixed",  # fixed: flat indices 0, 5, ..., 250 | random: fresh pixels each step
    "n_random_queries": 64,
    "modes": 3,  # sinusoidal modes per field
    "max_frequency": 0.75,  # cycles per field side
    "contrast": 2.0,  # tanh stretch that pushes values towards 0 and 1
    "d_model": 32,
    "n_heads": 4,
    "n_layers": 1,
    "n_frequencies": 32,
    "fourier_sigma": 3.0,
    "lr": 3e-3,
    "steps": 1000,
    "data_seed": 1234,
}


def make_fields(
    n: int, size: int, modes: int, max_frequency: float, contrast: float, generator: torch.Generator
) -> torch.Tensor:
    """Smooth random fields in [0, 1]: a contrast-stretched sum of low-frequency plane waves. (n, size, size)."""
    axis = (torch.arange(size) + 0.5) / size
    y, x = torch.meshgrid(axis, axis, indexing="ij")  # (size, size)
    freq = (torch.rand(n, modes, 2, generator=generator) * 2 - 1) * max_frequency  # (n, modes, 2)
    phase = torch.rand(n, modes, 1, 1, generator=generator) * 2 * math.pi
    amplitude = torch.rand(n, modes, 1, 1, generator=generator) + 0.5
    arg = 2 * math.pi * (freq[..., 0, None, None] * x + freq[..., 1, None, None] * y) + phase  # (n, modes, size, size)
    wave = (amplitude * torch.sin(arg)).sum(1) / amplitude.sum(1)  # (n, size, size) in [-1, 1]
    return (0.5 + 0.5 * torch.tanh(contrast * wave) / math.tanh(contrast)).clamp(0, 1)


def pixel_coords(size: int) -> torch.Tensor:
    """(size*size, 2) pixel-centre coordinates in [0, 1], row-major like `field.flatten()`."""
    axis = (torch.arange(size) + 0.5) / size
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=-1)


class FourierFeatures(nn.Module):
    """γ(v) = [cos(2πvB), sin(2πvB)] with B ~ N(0, σ²), a fixed buffer as in the seed."""

    def __init__(self, in_dim: int, n_frequencies: int, sigma: float):
        super().__init__()
        self.register_buffer("B", torch.randn(in_dim, n_frequencies) * sigma)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:  # (..., in_dim) -> (..., 2F)
        projected = 2 * math.pi * coords @ self.B
        return torch.cat([torch.cos(projected), torch.sin(projected)], dim=-1)


class SparseFieldTransformer(nn.Module):
    """Observations (coord, value) -> transformer encoder; queries cross-attend and read out a value."""

    def __init__(self, d_model: int, n_heads: int, n_layers: int, n_frequencies: int, fourier_sigma: float):
        super().__init__()
        self.fourier = FourierFeatures(2, n_frequencies, fourier_sigma)
        self.obs_embed = nn.Linear(2 * n_frequencies + 1, d_model)
        self.query_embed = nn.Sequential(nn.Linear(2 * n_frequencies, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 2 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.cross = nn.ModuleList(nn.MultiheadAttention(d_model, n_heads, batch_first=True) for _ in range(2))
        self.cross_ff = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))
            for _ in range(2)
        )
        self.cross_norm = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(2))
        self.head = nn.Linear(d_model, 1)

    def forward(self, obs_coords: torch.Tensor, obs_values: torch.Tensor, query_coords: torch.Tensor) -> torch.Tensor:
        # obs_coords (B, N, 2), obs_values (B, N, 1), query_coords (B, Q, 2) -> (B, Q, 1)
        memory = self.encoder(self.obs_embed(torch.cat([self.fourier(obs_coords), obs_values], dim=-1)))  # (B, N, d)
        query = self.query_embed(self.fourier(query_coords))  # (B, Q, d)
        for attention, norm, feed_forward in zip(self.cross, self.cross_norm, self.cross_ff):
            query = query + attention(norm(query), memory, memory, need_weights=True)[0]
            query = query + feed_forward(query)
        return self.head(query)


class FieldBatches:
    """Re-iterable batches of dicts with obs_coords, obs_values, query_idx, query_coords, target.

    queries: "fixed" (flat indices 0, 5, ..., 250), "random" (n_random fresh pixels per step) or "all".
    """

    def __init__(self, fields, observed_idx, coords, batch_size, queries, n_random=200, shuffle=True):
        self.fields, self.observed_idx, self.coords = fields, observed_idx, coords  # (n, P), (n, N), (P, 2)
        self.batch_size, self.queries, self.n_random, self.shuffle = batch_size, queries, n_random, shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.fields) / self.batch_size)

    def __iter__(self):
        n, pixels = self.fields.shape
        order = torch.randperm(n) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            rows = order[start : start + self.batch_size]
            if self.queries == "fixed":
                query_idx = torch.arange(0, 251, 5)
            elif self.queries == "random":
                query_idx = torch.randperm(pixels)[: self.n_random]
            else:
                query_idx = torch.arange(pixels)
            yield make_batch(self.fields[rows], self.observed_idx[rows], self.coords, query_idx)


def make_batch(fields: torch.Tensor, observed_idx: torch.Tensor, coords: torch.Tensor, query_idx: torch.Tensor) -> dict:
    """fields (B, P), observed_idx (B, N), coords (P, 2), query_idx (Q,) -> batch dict."""
    batch_size = fields.shape[0]
    return {
        "fields": fields,
        "observed_idx": observed_idx,
        "obs_coords": coords[observed_idx],  # (B, N, 2)
        "obs_values": fields.gather(1, observed_idx).unsqueeze(-1),  # (B, N, 1)
        "query_idx": query_idx,
        "query_coords": coords[query_idx].expand(batch_size, -1, -1),  # (B, Q, 2)
        "target": fields[:, query_idx].unsqueeze(-1),  # (B, Q, 1)
    }


def resample_queries(batch: dict, generator: torch.Generator, n_queries: int, coords: torch.Tensor) -> dict:
    query_idx = torch.randperm(coords.shape[0], generator=generator)[:n_queries]
    return make_batch(batch["fields"], batch["observed_idx"], coords, query_idx)


def predict(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return model(batch["obs_coords"], batch["obs_values"], batch["query_coords"]), batch["target"]


def loss(model: nn.Module, batch: dict) -> torch.Tensor:
    prediction, target = predict(model, batch)
    return torch.mean((prediction - target) ** 2)


@register_subject("sparse-field")
def build(config: dict | None = None) -> Subject:
    cfg = {**DEFAULTS, **(config or {})}
    size, pixels = cfg["size"], cfg["size"] ** 2
    generator = torch.Generator().manual_seed(cfg["data_seed"])
    n_total = cfg["n_train_fields"] + cfg["n_eval_fields"]
    fields = make_fields(n_total, size, cfg["modes"], cfg["max_frequency"], cfg["contrast"], generator).reshape(n_total, pixels)
    observed_idx = torch.stack([torch.randperm(pixels, generator=generator)[: cfg["n_observed"]] for _ in range(n_total)])
    coords = pixel_coords(size)
    split = cfg["n_train_fields"]
    train = FieldBatches(fields[:split], observed_idx[:split], coords, cfg["batch_size"], cfg["train_queries"], cfg["n_random_queries"])
    evaluation = FieldBatches(fields[split:], observed_idx[split:], coords, cfg["batch_size"], "all", shuffle=False)
    model = SparseFieldTransformer(cfg["d_model"], cfg["n_heads"], cfg["n_layers"], cfg["n_frequencies"], cfg["fourier_sigma"])
    return Subject(
        name="sparse-field",
        model=model,
        train_batches=train,
        eval_batches=evaluation,
        loss=loss,
        predict=predict,
        task=Task(kind="regression", value_range=(0.0, 1.0), metric="psnr_db"),
        recipe=Recipe(optimizer="adam", lr=cfg["lr"], steps=cfg["steps"]),
        config=cfg,
        queries=QuerySpace(
            coords=lambda batch: batch["query_coords"],
            space=coords,
            resample=lambda batch, gen: resample_queries(batch, gen, cfg["n_random_queries"], coords),
        ),
        capabilities=Capabilities(grid_shape=(size, size)),
        description="32×32 fields from 51 observed pixels; trained on 51 fixed query pixels"
        if cfg["train_queries"] == "fixed"
        else "32×32 fields from 51 observed pixels; trained on random query pixels",
    )


register_sample(Sample(
    name="sparse-field",
    seed_story="003_b7fb763f8add38fa.txt",
    failing={"train_queries": "fixed"},
    healthy={"train_queries": "random"},
    summary="field reconstruction stuck at the mean: trained on 51 fixed query pixels, evaluated on all 1024",
))
