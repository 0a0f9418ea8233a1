"""Sample patient `moving-tokens` (seed 001): a token video predictor that does not learn.

Videos of a 4×4 sprite moving with constant velocity (bouncing off the walls) on 16×16 frames.
Each frame is cut into 4×4 patches and each patch becomes a token: which part of the sprite it
holds (its overlap pattern), from a vocabulary of 50 patterns plus a [MASK] token. A small
transformer sees `n_frames - 1` frames and predicts the tokens of the next one, which are masked
in its input; in training, a share of the context tokens is masked too (masked modelling).

Failing variant (the seed's problems): the loss counts every position, visible ones included
(which it can copy from its input), the learning rate is constant, and the encoder is post-LN.
Healthy twin: loss on masked positions only, warmup + cosine, pre-LN.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

from ..core.capabilities import Capabilities
from ..core.registry import register_subject
from ..core.subject import MaskSpec, Recipe, Subject, Task
from . import Sample, register_sample

FRAME, PATCH, SPRITE = 16, 4, 4
GRID = FRAME // PATCH  # patches per side

DEFAULTS = {
    "n_frames": 3,
    "step_px": 2,
    "n_train_videos": 4096,
    "n_eval_videos": 256,
    "batch_size": 32,
    "context_mask_ratio": 0.15,
    "loss_on": "all",  # all: every position (the seed's bug) | masked: masked positions only
    "norm_first": False,  # post-LN (the seed's setup); True is pre-LN
    "schedule": "constant",
    "warmup_steps": 60,
    "d_model": 64,
    "n_heads": 4,
    "n_layers": 2,
    "lr": 1e-2,
    "steps": 1000,
    "data_seed": 7,
}


def patch_vocabulary() -> dict[tuple, int]:
    """Every overlap pattern of a 4×4 sprite with a 4×4 patch -> token id (0 is the empty patch)."""
    patterns = {tuple([0] * PATCH * PATCH): 0}
    for x, y in itertools.product(range(-SPRITE + 1, PATCH), repeat=2):
        frame = torch.zeros(PATCH, PATCH, dtype=torch.long)
        frame[max(y, 0) : max(0, y + SPRITE), max(x, 0) : max(0, x + SPRITE)] = 1
        patterns.setdefault(tuple(frame.flatten().tolist()), len(patterns))
    return patterns


VOCAB = patch_vocabulary()
MASK_ID = len(VOCAB)


def render_videos(n: int, n_frames: int, step_px: int, generator: torch.Generator) -> torch.Tensor:
    """(n, n_frames, FRAME, FRAME) binary videos of one sprite bouncing off the walls.

    Positions are multiples of `step_px` and the velocity is ±step_px on each axis.
    """
    span = FRAME - SPRITE
    position = torch.randint(0, span // step_px + 1, (n, 2), generator=generator) * step_px
    velocity = (torch.randint(0, 2, (n, 2), generator=generator) * 2 - 1) * step_px
    videos = torch.zeros(n, n_frames, FRAME, FRAME)
    for t in range(n_frames):
        for i in range(n):
            x, y = position[i].tolist()
            videos[i, t, y : y + SPRITE, x : x + SPRITE] = 1
        position = position + velocity
        bounce = (position < 0) | (position > span)
        velocity = torch.where(bounce, -velocity, velocity)
        position = position.clamp(0, span)
    return videos


def tokenize(videos: torch.Tensor) -> torch.Tensor:
    """(n, T, FRAME, FRAME) -> (n, T*GRID*GRID) token ids, patches in row-major order per frame."""
    n, frames = videos.shape[:2]
    patches = videos.reshape(n, frames, GRID, PATCH, GRID, PATCH).permute(0, 1, 2, 4, 3, 5)
    patches = patches.reshape(n, frames * GRID * GRID, PATCH * PATCH).long()
    ids = [VOCAB[tuple(p)] for p in patches.reshape(-1, PATCH * PATCH).tolist()]
    return torch.tensor(ids).reshape(n, frames * GRID * GRID)


class TokenVideoTransformer(nn.Module):
    """Token + (frame, row, column) embeddings -> nn.TransformerEncoder -> logits over the vocabulary."""

    def __init__(self, n_frames: int, d_model: int, n_heads: int, n_layers: int, norm_first: bool):
        super().__init__()
        self.embed = nn.Embedding(MASK_ID + 1, d_model)
        self.frame = nn.Parameter(torch.randn(n_frames, 1, 1, d_model) * 0.02)
        self.row = nn.Parameter(torch.randn(1, GRID, 1, d_model) * 0.02)
        self.column = nn.Parameter(torch.randn(1, 1, GRID, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d_model) if norm_first else None,
                                             enable_nested_tensor=False)
        self.head = nn.Linear(d_model, len(VOCAB))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, V)
        position = (self.frame + self.row + self.column).reshape(-1, self.embed.embedding_dim)  # (L, d)
        return self.head(self.encoder(self.embed(tokens) + position))


class VideoBatches:
    """Re-iterable batches of dicts: input (masked token ids), targets, masked (bool), all (B, L).

    The last frame is always masked; in training a share of the context tokens is masked too.
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, context_mask_ratio: float, shuffle: bool):
        self.tokens, self.batch_size, self.ratio, self.shuffle = tokens, batch_size, context_mask_ratio, shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.tokens) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.tokens)) if self.shuffle else torch.arange(len(self.tokens))
        per_frame = GRID * GRID
        for start in range(0, len(order), self.batch_size):
            targets = self.tokens[order[start : start + self.batch_size]]  # (B, L)
            masked = torch.zeros_like(targets, dtype=torch.bool)
            masked[:, -per_frame:] = True
            if self.ratio:
                masked[:, :-per_frame] = torch.rand(targets.shape[0], targets.shape[1] - per_frame) < self.ratio
            yield {"input": targets.masked_fill(masked, MASK_ID), "targets": targets, "masked": masked}


def per_position_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    logits = model(batch["input"])  # (B, L, V)
    return F.cross_entropy(logits.transpose(1, 2), batch["targets"], reduction="none")  # (B, L)


def loss_all_positions(model: nn.Module, batch: dict) -> torch.Tensor:
    """The seed's objective: cross-entropy averaged over every position, visible ones included."""
    return per_position_loss(model, batch).mean()


def loss_masked_positions(model: nn.Module, batch: dict) -> torch.Tensor:
    masked = batch["masked"].float()
    return (per_position_loss(model, batch) * masked).sum() / masked.sum().clamp(min=1)


def predict_future_frame(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets of the last (future) frame: what `accuracy` is scored on."""
    per_frame = GRID * GRID
    return model(batch["input"])[:, -per_frame:], batch["targets"][:, -per_frame:]


@register_subject("moving-tokens")
def build(config: dict | None = None) -> Subject:
    cfg = {**DEFAULTS, **(config or {})}
    generator = torch.Generator().manual_seed(cfg["data_seed"])
    n_total = cfg["n_train_videos"] + cfg["n_eval_videos"]
    tokens = tokenize(render_videos(n_total, cfg["n_frames"], cfg["step_px"], generator))
    split = cfg["n_train_videos"]
    model = TokenVideoTransformer(cfg["n_frames"], cfg["d_model"], cfg["n_heads"], cfg["n_layers"], cfg["norm_first"])
    return Subject(
        name="moving-tokens",
        model=model,
        train_batches=VideoBatches(tokens[:split], cfg["batch_size"], cfg["context_mask_ratio"], shuffle=True),
        eval_batches=VideoBatches(tokens[split:], cfg["batch_size"], 0.0, shuffle=False),
        loss=loss_all_positions if cfg["loss_on"] == "all" else loss_masked_positions,
        predict=predict_future_frame,
        task=Task(kind="tokens", metric="accuracy", num_classes=len(VOCAB)),
        recipe=Recipe(optimizer="adam", lr=cfg["lr"], steps=cfg["steps"], schedule=cfg["schedule"],
                      warmup_steps=cfg["warmup_steps"] if cfg["schedule"] == "warmup-cosine" else 0),
        config=cfg,
        masking=MaskSpec(
            masked=lambda batch: batch["masked"],
            targets=lambda batch: batch["targets"],
            with_targets=lambda batch, targets: {**batch, "targets": targets},
            per_position_loss=per_position_loss,
        ),
        capabilities=Capabilities(
            # attention checks: the keys of each context frame (the future frame is all [MASK] in the input)
            token_modalities=lambda batch: {f"frame {t}": torch.arange(batch["input"].shape[1]) // (GRID * GRID) == t
                                               for t in range(cfg["n_frames"] - 1)},
            embedding_layer="embed",
        ),
        description="token video predictor; the loss counts visible positions, constant LR, post-LN"
        if cfg["loss_on"] == "all"
        else "token video predictor; masked-only loss, warmup + cosine, pre-LN",
    )


register_sample(Sample(
    name="moving-tokens",
    seed_story="001_65d4fca2f82dde5c.txt",
    failing={"loss_on": "all", "norm_first": False, "schedule": "constant"},
    healthy={"loss_on": "masked", "norm_first": True, "schedule": "warmup-cosine"},
    summary="token video predictor that does not learn: loss on visible tokens too, constant LR, post-LN",
))
