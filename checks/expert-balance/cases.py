"""Cases for expert-balance: MoE layers written unlike the dreaming-moe sample, collapsed and balanced.

`SwitchLayer` is a top-1 layer that runs every expert densely (experts in an nn.ModuleDict, router
an nn.Sequential); `SparseTop2` dispatches tokens to experts in a list, its scorer returning a
(logits, extra) tuple. Neither is trained: the router weights are set by hand, which is enough to
make the routing collapsed or balanced on random tokens.
"""
import torch
from torch import nn

from modeldoctor import Subject, regression_subject

D, TOKENS = 16, 8


class SwitchLayer(nn.Module):
    """Top-1 routing; every expert computes every token and the chosen output is gathered."""

    def __init__(self, experts: int):
        super().__init__()
        self.switch = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, experts))
        self.ffns = nn.ModuleDict({f"ffn{i}": nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, D)) for i in range(experts)})

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        scores = self.switch(h).softmax(-1)  # (B, T, E)
        outputs = torch.stack([ffn(h) for ffn in self.ffns.values()], dim=-2)  # (B, T, E, D)
        best = scores.argmax(-1, keepdim=True)  # (B, T, 1)
        picked = outputs.gather(-2, best[..., None].expand(*best.shape, D)).squeeze(-2)  # (B, T, D)
        return h + scores.gather(-1, best) * picked


class Scorer(nn.Module):
    def __init__(self, experts: int):
        super().__init__()
        self.w = nn.Linear(D, experts)

    def forward(self, x):  # (N, D) -> ((N, E), (N,))
        logits = self.w(x)
        return logits, logits.logsumexp(-1)


class SparseTop2(nn.Module):
    """Top-2 routing with a dispatch loop: each expert only sees its tokens."""

    def __init__(self, experts: int):
        super().__init__()
        self.scorer = Scorer(experts)
        self.pool = nn.ModuleList(nn.Linear(D, D) for _ in range(experts))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        flat = h.reshape(-1, D)
        logits, _ = self.scorer(flat)
        top, idx = logits.softmax(-1).topk(2, dim=-1)  # (N, 2)
        mixed = torch.zeros_like(flat)
        for e, expert in enumerate(self.pool):
            rows, slot = torch.where(idx == e)
            if len(rows):
                mixed[rows] += top[rows, slot, None] * expert(flat[rows])
        return h + mixed.reshape_as(h)


class Net(nn.Module):
    def __init__(self, mixture: nn.Module):
        super().__init__()
        self.inp = nn.Linear(4, D)
        self.body = nn.Sequential(mixture, nn.GELU())
        self.out = nn.Linear(D, 1)

    def forward(self, x):  # (B, T, 4) -> (B, T, 1)
        return self.out(self.body(self.inp(x)))


def subject_with(mixture: nn.Module, name: str) -> Subject:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, TOKENS, 4, generator=g)
    y = x.sum(-1, keepdim=True)
    subject = regression_subject(name, Net(mixture), (x[:192], y[:192]), (x[192:], y[192:]))
    nn.init.zeros_(subject.model.inp.bias)  # zero-mean, symmetric hidden states
    return subject


def collapse(router: nn.Linear, favourite: list[int]) -> None:
    """Zero weights and a bias that prefers `favourite`: every token picks the same experts."""
    with torch.no_grad():
        router.weight.zero_()
        router.bias.fill_(-5.0)
        router.bias[favourite] = torch.arange(len(favourite), 0, -1, dtype=torch.float)


def balance(router: nn.Linear, subject: Subject) -> None:
    """Rows ±q_i, for q_i an orthonormal basis of the hidden states' span: symmetric, so even, routing."""
    basis, _ = torch.linalg.qr(subject.model.inp.weight.detach())  # (D, 4)
    rows = torch.cat([basis.T, -basis.T])  # (8, D)
    with torch.no_grad():
        router.weight.copy_(rows[[0, 4, 1, 5, 2, 6, 3, 7][: router.out_features]])
        router.bias.zero_()


def case_switch_collapsed_to_one_expert():
    layer = SwitchLayer(4)
    collapse(layer.switch[1], [2])
    return subject_with(layer, "switch-collapsed")


def case_switch_balanced():
    layer = SwitchLayer(4)
    subject = subject_with(layer, "switch-balanced")
    balance(layer.switch[1], subject)
    return subject


def case_top2_half_the_experts_dead():
    layer = SparseTop2(8)
    collapse(layer.scorer.w, [0, 1, 2, 3])
    with torch.no_grad():  # a little token dependence among the four live experts
        layer.scorer.w.weight[:4].normal_(0, 2.0, generator=torch.Generator().manual_seed(1))
    return subject_with(layer, "top2-half-dead")


def case_top2_balanced():
    layer = SparseTop2(8)
    subject = subject_with(layer, "top2-balanced")
    balance(layer.scorer.w, subject)
    return subject


def case_top2_one_dead_expert():
    layer = SparseTop2(8)
    subject = subject_with(layer, "top2-one-dead")
    balance(layer.scorer.w, subject)
    with torch.no_grad():
        layer.scorer.w.bias[5] = -50.0  # expert 5 never wins a slot
    return subject
