"""Cases for `attention`: tiny models whose attention logits are set by hand (nothing is trained).

Twelve tokens, the first six of modality "a" and the last six of modality "b". Queries are one-hot
positions and keys carry a hand-set logit matrix, so each case fixes exactly where the attention
goes; values are the token embeddings and a linear readout gives one number per position.
"""
import torch
from torch import nn
from torch.nn import functional as F

from modeldoctor.core.capabilities import Capabilities
from modeldoctor.core.subject import regression_subject

POSITIONS, HALF, HEADS, DIM, VOCAB = 12, 6, 2, 8, 10
OFFSET = torch.arange(POSITIONS)[:, None] - torch.arange(POSITIONS)[None, :]  # (L, S): query - key


class PositionalAttention(nn.Module):
    """Attention by position through F.scaled_dot_product_attention: logits[h, l, s] = q_l · k_s."""

    def __init__(self, logits: torch.Tensor):  # (H, L, S)
        super().__init__()
        self.key_codes = nn.Parameter(logits.transpose(-2, -1).clone())  # (H, S, L): key s holds column s

    def forward(self, values: torch.Tensor) -> torch.Tensor:  # (B, S, d) -> (B, S, d)
        batch = values.shape[0]
        queries = torch.eye(POSITIONS).expand(batch, HEADS, -1, -1)  # (B, H, L, L): one-hot positions
        keys = self.key_codes.expand(batch, -1, -1, -1)  # (B, H, S, L)
        mixed = F.scaled_dot_product_attention(queries, keys, values[:, None].expand(-1, HEADS, -1, -1), scale=1.0)
        return mixed.mean(1)  # (B, S, d): heads averaged


class TwoModalityModel(nn.Module):
    def __init__(self, *layer_logits: torch.Tensor):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList(PositionalAttention(logits) for logits in layer_logits)
        self.readout = nn.Linear(DIM, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, S)
        x = self.embed(tokens)
        for layer in self.layers:
            x = x + layer(x)
        return self.readout(x)[..., 0]


def modalities(batch) -> dict:
    return {"a": torch.arange(POSITIONS) < HALF, "b": torch.arange(POSITIONS) >= HALF}


def subject(name: str, *layer_logits: torch.Tensor):
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (64, POSITIONS), generator=generator)
    targets = torch.randn(64, POSITIONS, generator=generator)
    return regression_subject(name, TwoModalityModel(*layer_logits), (tokens, targets), (tokens, targets), batch_size=32,
                              capabilities=Capabilities(token_modalities=modalities, embedding_layer="embed"))


def local(*widths: float) -> torch.Tensor:
    """(H, L, S) logits -|l - s| / width: each head looks at the neighbourhood of its query."""
    return torch.stack([-OFFSET.abs().float() / width for width in widths])


def penalised_b(logits: torch.Tensor, penalty: float) -> torch.Tensor:
    """The logits with `penalty` subtracted on the keys of modality b."""
    return logits - penalty * (torch.arange(POSITIONS) >= HALF).float()


def case_collapsed_heads():
    """Every head of the one layer puts all its weight on the query's own position (logit gap 60)."""
    return subject("collapsed-heads", 60.0 * torch.eye(POSITIONS).expand(HEADS, -1, -1))


def case_one_layer_collapsed():
    """Two layers: the first collapsed onto the previous token, the second looks at neighbourhoods."""
    previous = 60.0 * (OFFSET == 1).float() + 60.0 * torch.eye(POSITIONS) * (torch.arange(POSITIONS) == 0)
    return subject("one-layer-collapsed", previous.expand(HEADS, -1, -1), local(1.0, 3.0))


def case_uniform_attention():
    """All logits zero: every query spreads its attention evenly over every key."""
    return subject("uniform-attention", torch.zeros(HEADS, POSITIONS, POSITIONS))


def case_ignored_modality():
    """Local attention, but the keys of modality b are 40 logits down: it gets no attention at all."""
    return subject("ignored-modality", penalised_b(local(1.0, 3.0), 40.0))


def case_underattended_modality():
    """Modality b 7 logits down: about 4% of its fair share of attention."""
    return subject("underattended-modality", penalised_b(local(1.0, 3.0), 7.0))


def case_local_attention():
    """Healthy: two heads attend to neighbourhoods of width 1 and 3, across both modalities."""
    return subject("local-attention", local(1.0, 3.0))
