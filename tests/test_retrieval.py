"""Retrieval metrics, LoRA, the lora-all-towers and learnable-temperature fixes, and starved gradient groups."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from modeldoctor import (
    apply_fixes,
    build_subject,
    evaluate,
    load_checkpoint,
    regression_subject,
    run_check,
    save_checkpoint,
    train,
)
from modeldoctor.checks.grad_norms import GradNorms
from modeldoctor.checks.retrieval import Retrieval
from modeldoctor.core.capabilities import Capabilities
from modeldoctor.core.errors import InputError
from modeldoctor.core.registry import load_plugins
from modeldoctor.engine.casebook import load_cases
from modeldoctor.nn.lora import LoRALinear, wrap_lora
from modeldoctor.probes.retrieval_metrics import (
    chance_baseline,
    chance_map,
    chance_recall,
    chance_recall_at,
    direction_metrics,
    match_ranks,
    mean_average_precision,
    recall_at,
)

load_plugins()  # the built-in fixes, which the runner filters prescriptions by
CASES, _ = load_cases(Path(__file__).resolve().parents[1] / "checks" / "retrieval")
# The crossmodal-retrieval patient, small: building it trains nothing and takes milliseconds.
SMALL = {"n_train": 1024, "n_eval": 200, "steps": 150}


# --- metrics -----------------------------------------------------------------------------------

def test_identity_embeddings_retrieve_perfectly():
    eye = torch.eye(6)  # (N, D) one-hot: each item is most similar to itself
    found = direction_metrics({"a": eye, "b": eye.clone()})
    for direction in (("a", "b"), ("b", "a")):
        d = found[direction]
        assert d["recall@1"] == 1.0 and d["map"] == 1.0 and d["median_rank"] == 1.0
        assert d["ranks"].tolist() == [1] * 6


def test_known_ranks_give_exact_recall_and_map():
    # Similarity rows built so the true match (the diagonal) ranks 1, 2, 3, 1, 5 among 5 items.
    similarity = torch.tensor([
        [0.9, 0.1, 0.2, 0.0, 0.3],
        [0.8, 0.5, 0.1, 0.2, 0.0],
        [0.7, 0.6, 0.4, 0.1, 0.0],
        [0.1, 0.2, 0.3, 0.9, 0.0],
        [0.5, 0.6, 0.7, 0.8, 0.2],
    ])
    queries = nn.functional.normalize(similarity, dim=-1)  # row scale does not change a row's order
    ranks = match_ranks(queries, torch.eye(5))
    assert ranks.tolist() == [1, 2, 3, 1, 5]
    assert recall_at(ranks, 1) == pytest.approx(2 / 5) and recall_at(ranks, 2) == pytest.approx(3 / 5)
    assert recall_at(ranks, 5) == 1.0
    assert mean_average_precision(ranks) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 + 1 / 5) / 5)


def test_ties_count_against_the_match():
    """A tower that embeds every item alike must not score R@1 = 1 through ties."""
    constant = nn.functional.normalize(torch.ones(8, 4), dim=-1)
    ranks = match_ranks(torch.eye(8, 4), constant)
    assert ranks.tolist() == [8] * 8 and recall_at(ranks, 1) == 0.0


def test_chance_levels():
    assert chance_recall_at(10, 500) == pytest.approx(0.02) and chance_recall_at(10, 4) == 1.0
    assert chance_map(1) == 1.0 and chance_map(4) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # A random ranking scores chance on average.
    generator = torch.Generator().manual_seed(0)
    n, ranks = 50, torch.stack([torch.randperm(50, generator=generator)[:1] + 1 for _ in range(4000)]).flatten()
    assert mean_average_precision(ranks) == pytest.approx(chance_map(n), rel=0.1)
    assert recall_at(ranks, 10) == pytest.approx(chance_recall_at(10, n), abs=0.02)


def test_evaluate_and_chance_baseline_of_a_retrieval_subject():
    aligned, untrained = CASES["aligned_towers"](), CASES["untrained_towers"]()
    assert evaluate(aligned) == 1.0
    assert evaluate(untrained) < 0.02
    assert chance_recall(aligned) == pytest.approx(1 / 300) and chance_recall(aligned, k=10) == pytest.approx(10 / 300)
    assert chance_baseline(aligned)["value"] == pytest.approx(1 / 300)


# --- the check ---------------------------------------------------------------------------------

def test_check_names_the_untrained_tower_and_its_figures():
    result = run_check(Retrieval(), CASES["one_untrained_tower"](), seed=0)
    assert result.status == "fail", result.summary
    m = result.metrics
    assert m["untrained_modalities"] == ["audio"] and "tower 'audio' looks untrained" in result.summary
    assert set(m["at_chance"]) == {"image->audio", "text->audio", "audio->image", "audio->text"}
    assert m["image->text.recall@1"] > 0.9 and m["image->audio.recall@10"] < 2 * m["chance.recall@10"]
    assert m["image->audio.p_value"] > 0.01 and m["image->text.p_value"] < 1e-6
    table, heatmap, bar = result.figures
    assert [table["kind"], heatmap["kind"], bar["kind"]] == ["table", "heatmap", "bar"]
    assert len(table["rows"]) == 7 and table["rows"][-1][0] == "chance"  # 6 directions + chance
    assert heatmap["matrix"][0][0] is None and len(heatmap["matrix"]) == 3  # (query, gallery), no self-retrieval
    assert bar["hlines"][0]["y"] == pytest.approx(1 / 300, rel=1e-4)
    # Its towers are trainable (only badly initialised), so lora-all-towers does not apply.
    assert result.fixes == ["learnable-temperature", "grad-clip"]


def test_check_skips_without_embed_and_thresholds_are_options():
    x = torch.rand(16, 2)
    assert run_check(Retrieval(), regression_subject("plain", nn.Linear(2, 2), (x, x), (x, x))).status == "skip"
    lagging = CASES["lagging_noisy_modality"]
    assert run_check(Retrieval(warn_ratio=0.05), lagging(), seed=0).status == "pass"
    assert run_check(Retrieval(fail_ratio_to_chance=20.0), lagging(), seed=0).status == "fail"
    assert run_check(Retrieval(max_items=40), lagging(), seed=0).status == "warn"  # fewer than min_items
    with pytest.raises(ValueError):
        Retrieval(no_such_option=1)


# --- LoRA --------------------------------------------------------------------------------------

def test_lora_linear_keeps_names_freezes_the_base_and_starts_as_the_base():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 3))
    keys, x = set(model.state_dict()), torch.randn(4, 6)
    before = model(x).detach()
    assert wrap_lora(model) == ["0", "2"]
    assert isinstance(model[0], LoRALinear) and model[0].lora_a.shape == (8, 6) and model[0].lora_b.shape == (5, 8)
    assert set(model.state_dict()) == keys | {f"{i}.lora_{ab}" for i in (0, 2) for ab in "ab"}
    assert torch.allclose(model(x), before)  # B = 0: wrapping changes nothing
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {f"{i}.lora_{ab}" for i in (0, 2) for ab in "ab"}
    model(x).sum().backward()
    assert model[2].lora_b.grad.abs().sum() > 0 and model[0].weight.grad is None


def test_lora_state_dict_round_trip_and_update():
    torch.manual_seed(0)
    layer = LoRALinear.from_linear(nn.Linear(4, 3))
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(2, 4)
    expected = x @ layer.weight.T + layer.bias + layer.scaling * x @ layer.lora_a.T @ layer.lora_b.T
    assert torch.allclose(layer(x), expected, atol=1e-6)
    copy = LoRALinear(4, 3)
    copy.load_state_dict(layer.state_dict())
    assert torch.allclose(copy(x), layer(x))


def test_wrap_lora_under_a_prefix_only_frozen():
    model = nn.ModuleDict({"a": nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), "b": nn.Linear(2, 2)})
    model["a"][1].requires_grad_(False)
    assert wrap_lora(model, "a", only_frozen=True) == ["a.1"]
    assert type(model["a"][0]) is nn.Linear and type(model["b"]) is nn.Linear
    assert wrap_lora(model, "b") == ["b"] and isinstance(model["b"], LoRALinear)


# --- fixes -------------------------------------------------------------------------------------

def test_lora_all_towers_adapts_the_frozen_tower_and_round_trips(tmp_path):
    torch.manual_seed(0)
    subject = build_subject("crossmodal-retrieval", SMALL)
    assert not any(p.requires_grad for p in subject.model.towers.audio.parameters())
    keys, batch = set(subject.model.state_dict()), next(iter(subject.eval_batches))
    before = subject.model(batch)["audio"].detach()
    patched = apply_fixes(subject, ["lora-all-towers"])
    audio = patched.model.towers.audio
    assert isinstance(audio.proj, LoRALinear) and all(isinstance(audio.encoder[i], LoRALinear) for i in (0, 2))
    assert keys < set(patched.model.state_dict())  # every old key kept, adapters added
    assert torch.allclose(patched.model(batch)["audio"], before)
    train(patched, 20)
    assert audio.proj.lora_b.abs().sum() > 0
    path = save_checkpoint(tmp_path / "patched.pt", patched)
    loaded = load_checkpoint(path).subject  # replays the fix, then loads the weights
    assert loaded.fixes_applied == ["lora-all-towers"]
    assert torch.equal(loaded.model(batch)["audio"], patched.model(batch)["audio"])
    healthy = build_subject("crossmodal-retrieval", {**SMALL, "lora_towers": ["image", "text", "audio"]})
    with pytest.raises(InputError, match="already has trainable"):
        apply_fixes(healthy, ["lora-all-towers"])


def test_learnable_temperature_turns_the_buffer_into_a_parameter_and_round_trips(tmp_path):
    torch.manual_seed(0)
    subject = build_subject("crossmodal-retrieval", SMALL)
    assert "logit_scale" in dict(subject.model.named_buffers())
    keys = set(subject.model.state_dict())
    patched = apply_fixes(subject, ["learnable-temperature"])
    scale = patched.model.logit_scale
    assert isinstance(scale, nn.Parameter) and scale.item() == pytest.approx(math.log(1 / 0.07))
    assert set(patched.model.state_dict()) == keys
    train(patched, 20)
    assert patched.model.logit_scale.item() != pytest.approx(math.log(1 / 0.07), abs=1e-4)  # it trains
    loaded = load_checkpoint(save_checkpoint(tmp_path / "patched.pt", patched)).subject
    assert isinstance(loaded.model.logit_scale, nn.Parameter)
    assert loaded.model.logit_scale.item() == pytest.approx(patched.model.logit_scale.item())
    assert subject.model.logit_scale.item() == 0.0, "the original is untouched"
    healthy = build_subject("crossmodal-retrieval", {**SMALL, "temperature": "learnable"})
    with pytest.raises(InputError, match="already a trainable"):
        apply_fixes(healthy, ["learnable-temperature"])


def test_prescribed_fixes_lift_the_frozen_tower_above_chance():
    """Same seed and budget: the failing patient stays at chance on audio; patched, every direction is above it."""
    results = {}
    for arm, fixes in (("baseline", []), ("patched", ["lora-all-towers", "learnable-temperature"])):
        torch.manual_seed(0)
        subject = apply_fixes(build_subject("crossmodal-retrieval", SMALL), fixes)
        train(subject)
        results[arm] = run_check(Retrieval(), subject, seed=0)
    assert results["baseline"].status == "fail" and results["baseline"].metrics["untrained_modalities"] == ["audio"]
    assert results["patched"].metrics["at_chance"] == [], results["patched"].summary
    assert results["patched"].metrics["audio->image.recall@1"] > 10 * results["baseline"].metrics["audio->image.recall@1"] + 0.1


# --- starved gradient groups (grad-norms) -------------------------------------------------------

class ScaledTowers(nn.Module):
    """Two towers into one head; tower b's output is scaled by `b_scale` (1e-5: its gradient starves)."""

    def __init__(self, b_scale: float):
        super().__init__()
        self.tower_a, self.tower_b, self.head = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(16, 1)
        self.b_scale = b_scale

    def forward(self, x):  # (B, 8) -> (B, 1)
        return self.head(torch.cat([self.tower_a(x[:, :4]), self.b_scale * self.tower_b(x[:, 4:])], dim=-1))


def towers_subject(b_scale: float):
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = x[:, :1] + x[:, 4:5]
    return regression_subject("towers", ScaledTowers(b_scale), (x, y), (x, y),
                              capabilities=Capabilities(param_groups={"a": ["tower_a"], "b": ["tower_b"], "head": ["head"]}))


def test_starved_group_warns_and_is_drawn():
    result = run_check(GradNorms(), towers_subject(1e-5), seed=0)
    m = result.metrics
    assert m["starved_groups"] == ["b"] and m["group_grad_norms"]["b"] < 1e-3 * m["group_grad_norms"]["a"]
    assert result.status == "warn" and "group 'b' is starved" in result.summary
    bar = result.figures[-1]
    assert bar["title"] == "Gradient norm per parameter group" and bar["labels"] == ["a", "b", "head"]
    assert bar["values"][1] < bar["hlines"][0]["y"] < bar["values"][0]  # log10 norms vs the starved line
    healthy = run_check(GradNorms(), towers_subject(1.0), seed=0)
    assert healthy.metrics["starved_groups"] == [] and healthy.status == "pass", healthy.summary
    assert run_check(GradNorms(starved_ratio=1e-6), towers_subject(1e-5), seed=0).metrics["starved_groups"] == []
