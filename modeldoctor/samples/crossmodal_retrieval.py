"""Sample patient `crossmodal-retrieval` (seed 002): contrastive towers where one tower never learns.

Three synthetic modalities ("image" 48-d, "text" 32-d, "audio" 24-d) of the same items share a
latent z (8-d). Each modality is x = Q_s g(z) + σ·Q_n u: a fixed random nonlinear map g of z laid
into half of the input directions (Q_s), plus item-specific nuisance u (4-d) in other directions
(Q_n) that no other modality shares. Each modality has a "pretrained" tower (MLP → projection to a
32-d shared space) whose base weights are frozen and fixed by `model_seed`; the image and text
towers' pretraining saw the shared content, but the audio tower's first layer is blind to it
(its rows are orthogonal to Q_s: pretrained for another task), so frozen, audio embeds nuisance
only. LoRA (rank 8) on a tower is what lets it adapt. Training: symmetric InfoNCE over every pair
of modalities, temperature read from the model's `logit_scale` (log 1/τ, CLIP's convention,
clamped at log 100).

Failing variant (the seed's setup gone wrong): LoRA reaches the image and text towers only (a
target-name mismatch leaves the audio tower, projection included, without a trainable
parameter), and τ = 1 is a fixed buffer. Audio retrieval stays at chance.
Healthy twin: LoRA on every tower, and a learnable temperature initialised at τ = 0.07.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core.capabilities import Capabilities
from ..core.registry import register_subject
from ..core.subject import Recipe, Subject, Task
from ..nn.lora import wrap_lora
from ..probes.retrieval_metrics import info_nce
from . import Sample, register_sample

DEFAULTS = {
    "modalities": {"image": 48, "text": 32, "audio": 24},  # input dimension per modality
    "latent_dim": 8,
    "nuisance_dim": 4,
    "nuisance_scale": 0.5,
    "blind_towers": ["audio"],  # pretrained first layer blind to the shared content
    "hidden": 64,
    "embed_dim": 32,
    "lora_towers": ["image", "text"],  # the seed's mismatch: audio gets no LoRA
    "lora_rank": 8,
    "temperature": "fixed",  # fixed: a buffer at fixed_tau | learnable: a parameter from init_tau
    "fixed_tau": 1.0,
    "init_tau": 0.07,
    "n_train": 4096,
    "n_eval": 500,
    "batch_size": 128,
    "lr": 2e-3,
    "steps": 300,
    "data_seed": 7,
    "model_seed": 11,
}


def make_modalities(cfg: dict, n: int, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """({modality: (n, d) inputs}, {modality: (d, d/2) orthonormal basis of the shared-content directions})."""
    latent = torch.randn(n, cfg["latent_dim"], generator=generator)  # (n, L): what every modality shares
    inputs, content_bases = {}, {}
    for name, dim in cfg["modalities"].items():
        basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))  # (d, d) orthonormal
        shared, k = dim // 2, cfg["nuisance_dim"]
        w1 = torch.randn(cfg["latent_dim"], 32, generator=generator) * 1.5 / math.sqrt(cfg["latent_dim"])
        w2 = torch.randn(32, shared, generator=generator) / math.sqrt(32)
        content = torch.tanh(latent @ w1) @ w2  # (n, d/2)
        content = content / content.std(0, keepdim=True) * math.sqrt(dim / shared)  # ~unit variance per input dim
        nuisance = torch.randn(n, k, generator=generator) * cfg["nuisance_scale"] * math.sqrt(dim / k)  # (n, k)
        inputs[name] = content @ basis[:, :shared].T + nuisance @ basis[:, shared : shared + k].T  # (n, d)
        content_bases[name] = basis[:, :shared]
    return inputs, content_bases


class Tower(nn.Module):
    """MLP encoder and a projection into the shared embedding space: (B, d) -> (B, embed_dim)."""

    def __init__(self, dim: int, hidden: int, embed_dim: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.proj = nn.Linear(hidden, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.encoder(x))


class CrossModalTowers(nn.Module):
    """One tower per modality; `logit_scale` = log(1/τ) for the contrastive loss."""

    def __init__(self, modalities: dict[str, int], hidden: int, embed_dim: int, logit_scale: float, learnable: bool):
        super().__init__()
        self.towers = nn.ModuleDict({name: Tower(dim, hidden, embed_dim) for name, dim in modalities.items()})
        scale = torch.tensor(float(logit_scale))
        if learnable:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # {m: (B, d_m)} -> {m: (B, E)}
        return {name: tower(batch[name]) for name, tower in self.towers.items()}


def pretrain(model: CrossModalTowers, cfg: dict, content_bases: dict[str, torch.Tensor]) -> None:
    """Fixed "pretrained" base weights from `model_seed` (the same in every run), then frozen."""
    generator = torch.Generator().manual_seed(cfg["model_seed"])
    with torch.no_grad():
        for name, tower in model.towers.items():
            for layer in (m for m in tower.modules() if isinstance(m, nn.Linear)):
                bound = 1 / math.sqrt(layer.in_features)
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound * math.sqrt(3))
                layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * bound)
            if name in cfg["blind_towers"]:  # rows orthogonal to the shared-content directions
                first, basis = tower.encoder[0], content_bases[name]
                first.weight.copy_(first.weight - first.weight @ basis @ basis.T)
    model.towers.requires_grad_(False)


class ModalityBatches:
    """Re-iterable batches {modality: (B, d)}, row i the same item in every modality."""

    def __init__(self, inputs: dict[str, torch.Tensor], batch_size: int, shuffle: bool):
        self.inputs, self.batch_size, self.shuffle = inputs, batch_size, shuffle
        self.n = len(next(iter(inputs.values())))

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n) if self.shuffle else torch.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            rows = order[start : start + self.batch_size]
            yield {name: x[rows] for name, x in self.inputs.items()}


def embed(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    return model(batch)


def contrastive_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Symmetric InfoNCE over every pair of modalities; τ read from the model (so a fix can change it)."""
    return info_nce(model(batch), model.logit_scale)


def predict_similarity(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-similarity logits of the first two modalities (B, B) and the matching targets arange(B)."""
    first, second = list(model(batch).values())[:2]
    logits = nn.functional.normalize(first, dim=-1) @ nn.functional.normalize(second, dim=-1).T
    return logits, torch.arange(len(logits))


@register_subject("crossmodal-retrieval")
def build(config: dict | None = None) -> Subject:
    cfg = {**DEFAULTS, **(config or {})}
    generator = torch.Generator().manual_seed(cfg["data_seed"])
    inputs, content_bases = make_modalities(cfg, cfg["n_train"] + cfg["n_eval"], generator)
    train_inputs = {name: x[: cfg["n_train"]] for name, x in inputs.items()}
    eval_inputs = {name: x[cfg["n_train"] :] for name, x in inputs.items()}
    learnable = cfg["temperature"] == "learnable"
    tau = cfg["init_tau"] if learnable else cfg["fixed_tau"]
    model = CrossModalTowers(cfg["modalities"], cfg["hidden"], cfg["embed_dim"], math.log(1 / tau), learnable)
    pretrain(model, cfg, content_bases)
    for name in cfg["lora_towers"]:
        wrap_lora(model, f"towers.{name}", rank=cfg["lora_rank"])
    lora_said = "every tower" if set(cfg["lora_towers"]) >= set(cfg["modalities"]) else " and ".join(cfg["lora_towers"]) + " only"
    return Subject(
        name="crossmodal-retrieval",
        model=model,
        train_batches=ModalityBatches(train_inputs, cfg["batch_size"], shuffle=True),
        eval_batches=ModalityBatches(eval_inputs, cfg["batch_size"], shuffle=False),
        loss=contrastive_loss,
        predict=predict_similarity,
        task=Task(kind="retrieval", metric="recall@1", higher_is_better=True),
        recipe=Recipe(optimizer="adam", lr=cfg["lr"], steps=cfg["steps"]),
        config=cfg,
        capabilities=Capabilities(
            embed=embed,
            param_groups={name: [f"towers.{name}"] for name in cfg["modalities"]},
            temperature="logit_scale",
        ),
        description=f"three-tower contrastive retrieval; LoRA rank {cfg['lora_rank']} on {lora_said}, "
        f"{'learnable' if learnable else 'fixed'} temperature τ = {tau:g}",
    )


register_sample(Sample(
    name="crossmodal-retrieval",
    seed_story="002_274f7b133a176f61.txt",
    failing={"lora_towers": ["image", "text"], "temperature": "fixed"},
    healthy={"lora_towers": ["image", "text", "audio"], "temperature": "learnable"},
    summary="contrastive image/text/audio towers with LoRA where the audio tower never learns: LoRA misses it, τ fixed at 1",
))
