"""Sample patient `dreaming-moe` (seed 004): a top-2 mixture of experts whose router collapses.

The task is the seed's (what, action) -> result at toy size: a sequence holds one action token and
`length` "what" tokens; the model must output, at each "what" position, the result of applying the
action to that token (each action is a fixed random permutation of the vocabulary). A small pre-LN
transformer (attention through `F.scaled_dot_product_attention`) has a top-2 MoE feed-forward layer
in each block, with sparse dispatch: each expert only sees its tokens.

Failing variant (the seed's "experts should be used equally", unchecked): no load-balancing loss
and no gate noise; the router starts at zero weights (its bias alone decides, the same for every
token), and the chosen experts' outputs are averaged rather than weighted by the gate, so the task
never trains the router: every token goes to the same two experts and the others stay dead.
Healthy twin: gate-weighted combine, small random router init, gate noise std 0.1 and the Switch
auxiliary loss (α = 0.01) read from the model (`load_loss()`, like the seed's `last_load_loss`).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..core.capabilities import Capabilities
from ..core.registry import register_subject
from ..core.subject import Recipe, Subject, Task
from . import Sample, register_sample

DEFAULTS = {
    "vocab": 16,
    "actions": 4,
    "length": 8,
    "n_train": 4096,
    "n_eval": 512,
    "batch_size": 64,
    "d_model": 48,
    "n_heads": 4,
    "n_blocks": 2,
    "num_experts": 4,
    "top_k": 2,
    "expert_hidden": 96,
    "router_init_std": 0.0,  # std of the router weights × 1/sqrt(d); 0: the bias alone routes
    "combine": "mean",  # mean: average the chosen experts | weighted: weight them by their gate probabilities
    "noise_std": 0.0,  # gate noise in training (the healthy twin uses 0.1)
    "load_balance_weight": 0.0,  # α of the Switch auxiliary loss (the healthy twin uses 0.01)
    "lr": 3e-3,
    "steps": 400,
    "data_seed": 4,
}


class Expert(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.up, self.down = nn.Linear(d_model, hidden), nn.Linear(hidden, d_model)
        nn.init.zeros_(self.down.weight)  # residual branches start as identity (Fixup/ReZero-style)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, d)
        return self.down(F.gelu(self.up(x)))


class TopKMoE(nn.Module):
    """Top-k gating over E experts with sparse dispatch; stores its Switch balance loss each forward.

    combine "weighted": Σ over the chosen experts of p_i·E_i(x) (Switch/GShard style, the router
    learns from the task); "mean": the chosen experts' outputs averaged (the router gets no task gradient).
    """

    def __init__(self, d_model: int, hidden: int, num_experts: int, top_k: int, noise_std: float, init_std: float,
                 combine: str):
        super().__init__()
        self.gate = nn.Linear(d_model, num_experts, bias=True)
        nn.init.normal_(self.gate.weight, std=init_std / math.sqrt(d_model))
        self.experts = nn.ModuleList(Expert(d_model, hidden) for _ in range(num_experts))
        self.top_k, self.noise_std = top_k, noise_std
        self.combine = combine
        self.last_load_loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, d) -> (B, L, d)
        tokens = x.reshape(-1, x.shape[-1])  # (N, d)
        logits = self.gate(tokens)  # (N, E)
        if self.training and self.noise_std:
            logits = logits + torch.randn_like(logits) * self.noise_std
        probs = logits.softmax(-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.combine == "mean":
            weights = torch.full_like(weights, 1.0 / self.top_k)
        out = torch.zeros_like(tokens)
        for index, expert in enumerate(self.experts):
            rows, slot = (chosen == index).nonzero(as_tuple=True)
            if len(rows):
                out = out.index_add(0, rows, weights[rows, slot, None] * expert(tokens[rows]))
        dispatched = torch.bincount(chosen.reshape(-1), minlength=len(self.experts)).float() / chosen.numel()  # (E,)
        self.last_load_loss = len(self.experts) * (dispatched * probs.mean(0)).sum()
        return out.reshape_as(x)


class Block(nn.Module):
    """Pre-LN block: multi-head self-attention through F.scaled_dot_product_attention, then the MoE."""

    def __init__(self, cfg: dict):
        super().__init__()
        d = cfg["d_model"]
        self.n_heads = cfg["n_heads"]
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.moe = TopKMoE(d, cfg["expert_hidden"], cfg["num_experts"], cfg["top_k"], cfg["noise_std"], cfg["router_init_std"],
                           cfg["combine"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, d)
        b, length, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, d/H)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, length, d))
        return x + self.moe(self.norm2(x))


class DreamGenerator(nn.Module):
    """Token + position embeddings -> blocks -> logits over the vocabulary at every position."""

    def __init__(self, cfg: dict):
        super().__init__()
        d = cfg["d_model"]
        self.embed = nn.Embedding(cfg["vocab"] + cfg["actions"], d)
        self.position = nn.Parameter(torch.randn(cfg["length"] + 1, d) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg["n_blocks"]))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg["vocab"])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, 1 + length) -> (B, 1 + length, vocab)
        x = self.embed(tokens) + self.position
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def load_loss(self) -> torch.Tensor:
        """Sum of the blocks' Switch balance losses from the last forward (the seed's `last_load_loss`)."""
        return sum(block.moe.last_load_loss for block in self.blocks)


def make_data(cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1 + length) inputs [action, what...] and (N, length) results, from fixed permutations."""
    g = torch.Generator().manual_seed(cfg["data_seed"])
    n = cfg["n_train"] + cfg["n_eval"]
    permutations = torch.stack([torch.randperm(cfg["vocab"], generator=g) for _ in range(cfg["actions"])])  # (A, V)
    action = torch.randint(0, cfg["actions"], (n,), generator=g)
    what = torch.randint(0, cfg["vocab"], (n, cfg["length"]), generator=g)
    result = permutations[action[:, None], what]  # (N, length)
    inputs = torch.cat([(cfg["vocab"] + action)[:, None], what], dim=1)
    return inputs, result


class TokenBatches:
    def __init__(self, inputs: torch.Tensor, results: torch.Tensor, batch_size: int, shuffle: bool):
        self.inputs, self.results, self.batch_size, self.shuffle = inputs, results, batch_size, shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.inputs) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.inputs)) if self.shuffle else torch.arange(len(self.inputs))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            yield {"tokens": self.inputs[rows], "result": self.results[rows]}


def predict_results(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the "what" positions (B, length, vocab) and the result tokens (B, length)."""
    return model(batch["tokens"])[:, 1:], batch["result"]


class ResultLoss:
    """Cross-entropy on the results, plus α times the model's own balance loss when α > 0."""

    def __init__(self, load_balance_weight: float):
        self.weight = load_balance_weight

    def __call__(self, model: nn.Module, batch: dict) -> torch.Tensor:
        logits, result = predict_results(model, batch)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), result.reshape(-1))
        return loss + self.weight * model.load_loss() if self.weight else loss


def token_modalities(batch: dict) -> dict[str, torch.Tensor]:
    """Position 0 holds the action, the rest the "what" tokens: masks (S,)."""
    action = torch.zeros(batch["tokens"].shape[1], dtype=torch.bool)
    action[0] = True
    return {"action": action, "what": ~action}


@register_subject("dreaming-moe")
def build(config: dict | None = None) -> Subject:
    cfg = {**DEFAULTS, **(config or {})}
    inputs, results = make_data(cfg)
    split = cfg["n_train"]
    balanced = cfg["load_balance_weight"] > 0 or cfg["noise_std"] > 0 or cfg["combine"] == "weighted"
    return Subject(
        name="dreaming-moe",
        model=DreamGenerator(cfg),
        train_batches=TokenBatches(inputs[:split], results[:split], cfg["batch_size"], shuffle=True),
        eval_batches=TokenBatches(inputs[split:], results[split:], cfg["batch_size"], shuffle=False),
        loss=ResultLoss(cfg["load_balance_weight"]),
        predict=predict_results,
        task=Task(kind="tokens", metric="accuracy", num_classes=cfg["vocab"]),
        recipe=Recipe(optimizer="adam", lr=cfg["lr"], steps=cfg["steps"]),
        config=cfg,
        capabilities=Capabilities(token_modalities=token_modalities, embedding_layer="embed"),
        description="top-2 MoE transformer; gate-weighted experts, balancing loss, gate noise" if balanced
        else "top-2 MoE transformer; no balancing loss or gate noise, zero-init router that the task never trains",
    )


register_sample(Sample(
    name="dreaming-moe",
    seed_story="004_fe601c37b9eaaa75.txt",
    failing={"combine": "mean", "router_init_std": 0.0, "noise_std": 0.0, "load_balance_weight": 0.0},
    healthy={"combine": "weighted", "router_init_std": 0.1, "noise_std": 0.1, "load_balance_weight": 0.01},
    summary="top-2 mixture of experts whose router collapses: no balancing loss, no gate noise",
))
