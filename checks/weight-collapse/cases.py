"""Cases for weight-collapse: embedding tables, VQ codebooks and MoE routers, healthy and collapsed.

Every case is a checkpoint's tensors (`Weights`), no model class. The healthy tables and routers
are trained for a few dozen Adam steps on small synthetic tasks (or are at their random init, which
is distinct too); the collapsed ones are built by hand from the healthy ones.
"""
from functools import lru_cache

import torch
from torch import nn
from torch.nn import functional as F

from modeldoctor.core.evidence import Weights
from modeldoctor.nn.vq import VectorQuantizer

VOCAB, D, LENGTH, EXPERTS = 64, 32, 12, 8


class TinyLM(nn.Module):
    """Token embedding + learned positions -> one gated (LLaMA-style) MLP -> logits for the next token."""

    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, D)
        self.pos_embed = nn.Parameter(torch.randn(1, LENGTH, D) * 0.02)
        self.norm = nn.LayerNorm(D)
        self.gate_proj, self.up_proj = nn.Linear(D, 16, bias=False), nn.Linear(D, 16, bias=False)  # hidden 16 < D
        self.down_proj = nn.Linear(16, D, bias=False)
        self.lm_head = nn.Linear(D, VOCAB, bias=False)

    def forward(self, tokens):  # (B, L) -> (B, L, VOCAB)
        h = self.embed_tokens(tokens) + self.pos_embed
        x = self.norm(h)
        h = h + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.lm_head(h)


class MoE(nn.Module):
    """LayerNorm -> router `gate` (E, D) -> top-1 expert, its output weighted by the gate probability."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.gate = nn.Linear(D, EXPERTS)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(D, 16), nn.GELU(), nn.Linear(16, D)) for _ in range(EXPERTS))

    def forward(self, x):  # (N, D) -> (N, D)
        probs = self.gate(self.norm(x)).softmax(-1)  # (N, E)
        weight, pick = probs.max(-1)  # (N,)
        out = torch.stack([expert(x) for expert in self.experts], 1)  # (N, E, D)
        return x + weight[:, None] * out[torch.arange(len(x)), pick]


@lru_cache(maxsize=None)
def trained_lm(steps: int = 40) -> TinyLM:
    """The next token is (token + position) mod VOCAB: needs both tables."""
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        tokens = torch.randint(VOCAB, (32, LENGTH))
        target = (tokens + torch.arange(LENGTH)) % VOCAB
        loss = F.cross_entropy(model(tokens).reshape(-1, VOCAB), target.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@lru_cache(maxsize=None)
def moe(steps: int = 0) -> MoE:
    """A mixture fitted to a piecewise-linear map, with a light Switch balance loss (cached: cases copy its weights)."""
    torch.manual_seed(0)
    model = MoE()
    if not steps:
        return model
    maps = torch.randn(4, D, D) / D**0.5
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x = torch.randn(128, D)
        y = torch.einsum("nd,nde->ne", x, maps[(x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()])
        probs = model.gate(model.norm(x)).softmax(-1)
        balance = EXPERTS * (F.one_hot(probs.argmax(-1), EXPERTS).float().mean(0) * probs.mean(0)).sum()
        loss = F.mse_loss(model(x), y) + 0.01 * balance
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def codebook(rows: torch.Tensor) -> Weights:
    """A codec checkpoint whose quantizer is a modeldoctor VectorQuantizer (`quantizer.embedding.weight`)."""
    return Weights.from_state_dict({"encoder.weight": torch.randn(16, 16) * 0.25, "quantizer.embedding.weight": rows})


def case_trained_embedding():
    """A trained tiny LM: its token and position tables are distinct."""
    return Weights.from_state_dict(state_of(trained_lm()))


def case_gated_mlp_is_not_a_router():
    """The tiny LM with every row of its (16, 32) `gate_proj` made equal: a gated MLP's gate, not a router."""
    state = state_of(trained_lm())
    state["gate_proj.weight"][:] = state["gate_proj.weight"][0]
    return Weights.from_state_dict(state)


def case_qwen_style_moe():
    """Qwen2-MoE names: router `mlp.gate` (E, d); experts and a shared expert with gate_proj; `shared_expert_gate` (1, d)."""
    generator = torch.Generator().manual_seed(0)
    state = {"embed_tokens.weight": torch.randn(VOCAB, D, generator=generator),
             "mlp.gate.weight": torch.randn(EXPERTS, D, generator=generator) / D**0.5,
             "mlp.shared_expert_gate.weight": torch.randn(1, D, generator=generator)}
    for prefix in [f"mlp.experts.{i}" for i in range(EXPERTS)] + ["mlp.shared_expert"]:
        state[f"{prefix}.gate_proj.weight"] = torch.ones(16, D)  # all rows equal: would read as a collapsed router
        state[f"{prefix}.up_proj.weight"] = torch.randn(16, D, generator=generator)
        state[f"{prefix}.down_proj.weight"] = torch.randn(D, 16, generator=generator)
    return Weights.from_state_dict(state)


def case_random_codebook():
    """A VectorQuantizer at its init (uniform in ±1/K): random rows are distinct."""
    torch.manual_seed(0)
    return codebook(VectorQuantizer(256, 16).embedding.weight.detach().clone())


def case_collapsed_codebook():
    """248 of 256 codes sit on 4 vectors (plus 0.1% noise), as after restarts from collapsed latents."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=generator)  # (4, 16)
    rows = torch.randn(256, 16, generator=generator)
    rows[8:] = centres[torch.randint(4, (248,), generator=generator)] * (1 + 1e-3 * torch.randn(248, 16, generator=generator))
    return codebook(rows)


def case_codebook_with_many_duplicates():
    """100 distinct codes, the other 156 near-copies of them: about 40% distinct."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(100, 16, generator=generator)
    copies = base[torch.randint(100, (156,), generator=generator)] * (1 + 1e-3 * torch.randn(156, 16, generator=generator))
    return codebook(torch.cat([base, copies]))


def case_router_at_init():
    return Weights.from_state_dict(state_of(moe(0)))


def case_router_trained():
    return Weights.from_state_dict(state_of(moe(40)))


def case_router_bias_favours_one_expert():
    """The trained router's bias gives expert 3 a head start of +5 (its logits' std is about 0.6)."""
    state = state_of(moe(40))
    state["gate.bias"][3] += 5.0
    return Weights.from_state_dict(state)


def case_router_rows_identical():
    """Every row of the router is the same vector: the experts cannot be told apart."""
    state = state_of(moe(0))
    state["gate.weight"][:] = state["gate.weight"][0]
    return Weights.from_state_dict(state)
