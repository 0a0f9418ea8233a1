"""Routers are found in MoE code written unlike the samples; balance statistics; the three MoE fixes."""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import modeldoctor
from modeldoctor import apply_fixes, build_subject, regression_subject, run_check
from modeldoctor.checks.expert_balance import ExpertBalance
from modeldoctor.core.capabilities import RouterSpec
from modeldoctor.probes.routing import Router, RouterRecord, capture_routing, find_routers, layer_stats, subject_routers, z_loss
from modeldoctor.probes.training import seed_everything, train

D = 12


# --- MoE implementations unlike dreaming-moe (different names, wiring, gates, dispatch) ----------

class Chooser(nn.Module):
    """A gate that is not an nn.Linear: a bare parameter matrix and a temperature."""

    def __init__(self, dim: int, count: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(dim, count) * 0.5)

    def forward(self, x):  # (..., dim) -> (..., count)
        return x @ self.table / 0.5


class HardRoutedMixture(nn.Module):
    """Top-1 by argmax, outputs not weighted by the gate: the task never trains the router."""

    def __init__(self, count: int = 4):
        super().__init__()
        self.specialists = nn.ModuleList(nn.Sequential(nn.Linear(D, 24), nn.Tanh(), nn.Linear(24, D)) for _ in range(count))
        self.chooser = Chooser(D, count)

    def forward(self, x):  # (B, D)
        pick = self.chooser(x).argmax(-1)  # (B,)
        out = torch.zeros_like(x)
        for i, specialist in enumerate(self.specialists):
            sel = pick == i
            if sel.any():
                out[sel] = specialist(x[sel])
        return x + out


class DenseSoftMixture(nn.Module):
    """Every expert runs on every token, mixed by a softmax over a two-layer gate (an nn.Sequential)."""

    def __init__(self, count: int = 3):
        super().__init__()
        self.mixer = nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, count))
        self.bank = nn.ModuleDict({f"e{i}": nn.Linear(D, D) for i in range(count)})

    def forward(self, x):  # (B, T, D)
        weights = F.softmax(self.mixer(x), dim=-1)  # (B, T, E)
        outs = torch.stack([m(x) for m in self.bank.values()], -1)  # (B, T, D, E)
        return (outs * weights.unsqueeze(-2)).sum(-1)


class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.stem = nn.Linear(3, D)
        self.trunk = nn.Sequential(nn.LayerNorm(D), inner)
        self.readout = nn.Linear(D, 1)

    def forward(self, x):
        return self.readout(self.trunk(self.stem(x)))


def subject_for(inner: nn.Module, shape=(3,), n=256) -> modeldoctor.Subject:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    y = torch.sin(x).sum(-1, keepdim=True)
    return regression_subject("moe-under-test", Wrapper(inner), (x[:192], y[:192]), (x[192:], y[192:]),
                              recipe=modeldoctor.Recipe(lr=3e-3, steps=150))


# --- detection --------------------------------------------------------------------------------

def test_routers_are_found_whatever_the_names_and_wiring():
    hard = subject_for(HardRoutedMixture())
    assert [(r.gate, r.experts, r.num_experts) for r in subject_routers(hard)] == [("trunk.1.chooser", "trunk.1.specialists", 4)]
    dense = subject_for(DenseSoftMixture(), shape=(5, 3))
    routers = subject_routers(dense)
    # the outermost module that emits the logits: the whole nn.Sequential, not its last Linear
    assert [(r.gate, r.experts, r.num_experts) for r in routers] == [("trunk.1.mixer", "trunk.1.bank", 3)]


def test_layer_stacks_and_output_heads_are_not_mistaken_for_experts():
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, 2, 24, batch_first=True), 3, enable_nested_tensor=False)
    assert find_routers(encoder, torch.randn(2, 5, D), lambda m, b: m(b)) == []

    class Heads(nn.Module):  # three identical heads, then a Linear with 3 outputs that runs after them
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList(nn.Linear(D, D) for _ in range(3))
            self.combine = nn.Linear(3 * D, 3)

        def forward(self, x):
            return self.combine(torch.cat([h(x) for h in self.heads], -1))

    assert find_routers(Heads(), torch.randn(4, D), lambda m, b: m(b)) == []


def test_declared_routers_cover_what_detection_cannot():
    class FusedExperts(nn.Module):  # experts as one batched weight tensor: no module per expert
        def __init__(self):
            super().__init__()
            self.gate = nn.Linear(D, 4)
            self.weights = nn.Parameter(torch.randn(4, D, D) * 0.1)

        def forward(self, x):  # (B, D)
            return x + torch.einsum("bd,bde->be", x, self.weights[self.gate(x).argmax(-1)])

    subject = subject_for(FusedExperts())
    assert subject_routers(subject) == []
    subject.capabilities.routers = [RouterSpec(gate="trunk.1.gate", num_experts=4, top_k=1)]
    result = run_check(ExpertBalance(), subject)
    assert result.status in ("pass", "warn", "fail") and result.metrics["trunk.1.num_experts"] == 4


def test_subject_without_experts_is_skipped_with_a_reason():
    result = run_check(ExpertBalance(), subject_for(nn.Linear(D, D)))
    assert result.status == "skip" and "router" in result.summary


# --- statistics --------------------------------------------------------------------------------

def record_with(loads: list[float], tokens: int = 400) -> RouterRecord:
    """A record whose logits route `loads` shares of the tokens by argmax, confidently."""
    num = len(loads)
    counts = [round(share * tokens) for share in loads]
    winners = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    logits = F.one_hot(winners, num).float() * 8.0  # (N, E)
    return RouterRecord(Router("g", None, num, top_k=1), logits=[logits])


def test_uniform_routing_scores_as_balanced():
    stats = layer_stats(record_with([0.25] * 4))
    assert stats["entropy"] == pytest.approx(1.0) and stats["cv"] == pytest.approx(0.0, abs=1e-9)
    assert stats["max_violation"] == pytest.approx(0.0, abs=1e-9) and stats["dead_experts"] == []
    assert stats["switch_balance"] == pytest.approx(1.0, abs=1e-3)


def test_collapsed_routing_scores_as_collapsed():
    stats = layer_stats(record_with([1.0, 0.0, 0.0, 0.0]))
    assert stats["entropy"] == pytest.approx(0.0, abs=1e-9) and stats["dead_experts"] == [1, 2, 3]
    assert stats["max_violation"] == pytest.approx(3.0)
    assert stats["switch_balance"] == pytest.approx(4.0, rel=0.01)  # E at total collapse
    assert stats["z_loss"] == pytest.approx(float(z_loss(record_with([1.0, 0, 0, 0]).all_logits())))


def test_observed_dispatch_gives_loads_and_top_k():
    subject = subject_for(HardRoutedMixture())
    records = capture_routing(subject, subject_routers(subject))
    record = records["trunk.1.chooser"]
    assert record.sparse() and record.top_k() == 1
    assert float(record.loads().sum()) == pytest.approx(1.0)
    assert len(record.all_logits()) == 64  # every evaluation token routed once


# --- fixes -------------------------------------------------------------------------------------

def collapsed_hard_router() -> modeldoctor.Subject:
    """Top-1 by argmax; the gate reads only feature 0, which a constant offset makes large for every token."""
    torch.manual_seed(0)
    inner = HardRoutedMixture()
    subject = subject_for(inner)

    class Offset(nn.Module):  # a constant input direction makes expert 0 win everywhere
        def forward(self, x):
            return x + torch.tensor([3.0] + [0.0] * (D - 1))

    subject.model.trunk.insert(1, Offset())
    with torch.no_grad():
        inner.chooser.table.zero_()
        inner.chooser.table[0, 0] = 1.0
    return subject


def test_load_balance_loss_and_gate_noise_remove_the_collapse():
    broken = collapsed_hard_router()
    seed_everything(0)
    train(broken)
    before = run_check(ExpertBalance(), broken)
    assert before.status == "fail", before.summary
    assert set(before.fixes) >= {"load-balance-loss", "noisy-top-k"}

    seed_everything(0)
    patched = apply_fixes(collapsed_hard_router(), ["load-balance-loss", "noisy-top-k"])
    train(patched)
    after = run_check(ExpertBalance(), patched)
    assert after.status != "fail", after.summary
    assert after.metrics["worst_entropy"] > before.metrics["worst_entropy"] + 0.4


def test_router_z_loss_shrinks_router_logits():
    def big_logits():
        torch.manual_seed(1)
        inner = DenseSoftMixture()
        with torch.no_grad():
            inner.mixer[2].weight.mul_(30.0)
        return subject_for(inner, shape=(5, 3))

    plain, penalised = big_logits(), apply_fixes(big_logits(), ["router-z-loss"])
    for subject in (plain, penalised):
        seed_everything(0)
        train(subject, 100)
    z = [run_check(ExpertBalance(), s).metrics["worst_z_loss"] for s in (plain, penalised)]
    assert z[1] < 0.5 * z[0], z


def test_noisy_top_k_perturbs_training_only_and_survives_copies_and_checkpoints(tmp_path):
    subject = apply_fixes(build_subject("dreaming-moe", {"n_train": 64, "n_eval": 64}), ["noisy-top-k"])
    batch = next(iter(subject.eval_batches))
    model = subject.model
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch["tokens"]), model(batch["tokens"]))  # eval: deterministic
    gate = model.blocks[0].moe.gate
    x = torch.randn(5, gate.in_features)
    gate.train()
    assert not torch.equal(gate(x), gate(x))
    gate.eval()
    assert torch.equal(gate(x), gate(x))
    assert len(subject.copy().model.blocks[0].moe.gate._forward_hooks) == 1

    path = modeldoctor.save_checkpoint(tmp_path / "noisy.pt", subject)
    loaded = modeldoctor.load_checkpoint(path).subject
    assert loaded.fixes_applied == ["noisy-top-k"]
    assert len(loaded.model.blocks[1].moe.gate._forward_hooks) == 1


def test_moe_fixes_do_not_apply_without_routers():
    from modeldoctor.core.registry import get_fix

    plain = subject_for(nn.Linear(D, D))
    for name in ("load-balance-loss", "noisy-top-k", "router-z-loss"):
        assert "router" in get_fix(name)().applicable(plain)


def test_balance_statistics_are_finite_for_the_dreaming_sample():
    subject = build_subject("dreaming-moe", {"n_train": 64, "n_eval": 64})
    result = run_check(ExpertBalance(), subject)
    assert result.status in ("pass", "warn", "fail")
    assert result.metrics["layers"] == ["blocks.0.moe", "blocks.1.moe"]
    assert all(math.isfinite(result.metrics[f"blocks.{i}.moe.z_loss"]) for i in range(2))
