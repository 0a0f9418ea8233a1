"""Attention capture (every implementation), its numbers, captum attribution, and the `attention` check.

The models here are written differently from the samples on purpose (other names, other wiring):
the capture must find attention by what it computes, not by how a sample happens to spell it.
"""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.functional import scaled_dot_product_attention as fused_attention

from modeldoctor.core.capabilities import Capabilities
from modeldoctor.core.registry import build_subject, get_check, load_plugins
from modeldoctor.core.subject import regression_subject
from modeldoctor.engine.runner import run_check
from modeldoctor.probes.attention_maps import capture_attention, modality_mass, normalized_entropy, record_attention
from modeldoctor.probes.attribution import modality_attribution
from modeldoctor.report.figures import figure_svg

load_plugins()
ORIGINAL = {"sdpa": F.scaled_dot_product_attention}  # in a dict: a module-level name would be patched too


def rows_sum_to_one(weights, tolerance=1e-5):
    return torch.allclose(weights.sum(-1), torch.ones(()), atol=tolerance)


# --- numbers ------------------------------------------------------------------------------------


def test_normalized_entropy_and_modality_mass_against_hand_computed_values():
    weights = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25] * 4, [0.7, 0.1, 0.1, 0.1], [1.0, 0.0, 0.0, 0.0]])[None, None]
    allowed = torch.tensor([[True, True, False, False]] + [[True] * 4] * 3)[None, None]
    entropy, valid = normalized_entropy(weights, allowed)
    expected_third = -(0.7 * math.log(0.7) + 0.3 * math.log(0.1)) / math.log(4)  # 0.6784
    assert entropy[0, 0, :3].tolist() == pytest.approx([1.0, 1.0, expected_third], abs=1e-6)
    assert entropy[0, 0, 3] == pytest.approx(0.0, abs=1e-9) and valid.all()
    # Without a mask, nonzero weights count as the allowed keys; one allowed key is no valid query.
    _, valid = normalized_entropy(weights, None)
    assert valid[0, 0].tolist() == [True, True, True, False]
    mass, fair, _ = modality_mass(weights, allowed, torch.tensor([True, False, True, False]))
    assert mass[0, 0].tolist() == pytest.approx([0.5, 0.5, 0.8, 1.0])
    assert fair[0, 0].tolist() == pytest.approx([0.5, 0.5, 0.5, 0.5])


# --- capture: nn.TransformerEncoderLayer (fast path) and nn.MultiheadAttention ------------------


def test_transformer_encoder_layers_in_eval_mode_are_captured_without_changing_the_output():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x, padding = torch.randn(3, 7, 16), torch.zeros(3, 7, dtype=torch.bool)
    padding[0, 5:] = True  # the first sequence has two padding keys
    with torch.no_grad():
        plain = encoder(x, src_key_padding_mask=padding)  # fast path allowed here
        with capture_attention(encoder) as capture:
            captured = encoder(x, src_key_padding_mask=padding)
    assert [r.name for r in capture.records] == ["layers.0.self_attn", "layers.1.self_attn"]
    for record in capture.records:
        assert record.weights.shape == (3, 4, 7, 7) and rows_sum_to_one(record.weights)
        assert record.weights[0, :, :, 5:].abs().max() == 0 and not record.allowed[0, :, :, 5:].any()
    assert torch.allclose(plain, captured, atol=1e-5)
    assert torch.backends.mha.get_fastpath_enabled()


class CrossReader(nn.Module):
    """A custom block that calls nn.MultiheadAttention itself: queries read a memory (L ≠ S)."""

    def __init__(self, width=12, heads=3):
        super().__init__()
        self.read = nn.MultiheadAttention(width, heads, batch_first=False)
        self.out = nn.Linear(width, 1)

    def forward(self, queries, memory, memory_padding):  # (L, B, w), (S, B, w), (B, S) -> (L, B, 1), weights
        mixed, averaged = self.read(queries, memory, memory, key_padding_mask=memory_padding)  # default: averaged weights
        return self.out(mixed), averaged


def test_multihead_attention_in_a_custom_block_gives_per_head_weights_and_the_caller_its_averaged_ones():
    torch.manual_seed(0)
    block = CrossReader().eval()
    queries, memory = torch.randn(4, 2, 12), torch.randn(9, 2, 12)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[1, 6:] = True
    with torch.no_grad():
        expected, expected_weights = block(queries, memory, padding)
        with capture_attention(block) as capture:
            output, weights = block(queries, memory, padding)
    (record,) = capture.records
    assert record.name == "read" and record.source == "multihead-attention"
    assert record.weights.shape == (2, 3, 4, 9) and rows_sum_to_one(record.weights)
    assert record.weights[1, ..., 6:].max() == 0 and record.allowed[0].all() and not record.allowed[1, ..., 6:].any()
    assert weights.shape == (2, 4, 9) and torch.allclose(weights, expected_weights, atol=1e-6)
    assert torch.allclose(output, expected, atol=1e-5)


# --- capture: scaled_dot_product_attention, by its name and under an alias ----------------------


class CausalHeads(nn.Module):
    def __init__(self, width=16, heads=4, alias=False):
        super().__init__()
        self.heads, self.alias = heads, alias
        self.project = nn.Linear(width, 3 * width)

    def forward(self, x):  # (B, T, w) -> (B, T, w)
        b, t, w = x.shape
        q, k, v = self.project(x).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)  # 3 × (B, H, T, w/H)
        attend = fused_attention if self.alias else F.scaled_dot_product_attention
        return attend(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, w)


class Decoder(nn.Module):
    def __init__(self, alias):
        super().__init__()
        self.blocks = nn.Sequential(CausalHeads(alias=alias), CausalHeads(alias=alias))

    def forward(self, x):
        return self.blocks(x)


@pytest.mark.parametrize("alias", [False, True], ids=["F.scaled_dot_product_attention", "imported-alias"])
def test_scaled_dot_product_attention_with_a_causal_mask_is_recomputed_with_its_weights(alias):
    torch.manual_seed(0)
    model, x = Decoder(alias).eval(), torch.randn(2, 6, 16)
    with torch.no_grad():
        expected = model(x)
        with capture_attention(model) as capture:
            assert (fused_attention if alias else F.scaled_dot_product_attention) is not ORIGINAL["sdpa"]
            output = model(x)
    assert fused_attention is ORIGINAL["sdpa"] and F.scaled_dot_product_attention is ORIGINAL["sdpa"]
    assert [r.name for r in capture.records] == ["blocks.0", "blocks.1"]
    weights = capture.records[0].weights
    assert weights.shape == (2, 4, 6, 6) and rows_sum_to_one(weights)
    assert weights.triu(1).abs().max() == 0 and torch.equal(capture.records[0].allowed[0, 0], torch.ones(6, 6).tril().bool())
    assert torch.allclose(output, expected, atol=1e-5)


# --- capture: softmax(QKᵀ) written by hand --------------------------------------------------------


class GroupMixer(nn.Module):
    """Self-attention by hand: einsum scores, Tensor.softmax, groups instead of heads."""

    def __init__(self, channels=12, groups=3):
        super().__init__()
        self.groups = groups
        self.to_abc = nn.Linear(channels, 3 * channels, bias=False)
        self.merge = nn.Linear(channels, channels)

    def forward(self, seq):  # (B, T, C) -> (B, T, C)
        b, t, c = seq.shape
        a, bee, val = self.to_abc(seq).view(b, t, 3, self.groups, c // self.groups).unbind(2)  # 3 × (B, T, G, C/G)
        affinity = torch.einsum("btgc,bsgc->bgts", a, bee) / math.sqrt(c // self.groups)  # (B, G, T, S)
        pattern = affinity.softmax(dim=-1)
        return self.merge(torch.einsum("bgts,bsgc->btgc", pattern, val).reshape(b, t, c))


class MemoryLookup(nn.Module):
    """Single-head cross attention with nn.Softmax over a memory of another length: (B, T, S) maps."""

    def __init__(self):
        super().__init__()
        self.normalize = nn.Softmax(dim=-1)

    def forward(self, probes, memory):  # (B, T, C), (B, M, C) -> (B, T, C)
        return self.normalize(torch.bmm(probes, memory.transpose(1, 2))) @ memory


class Router(nn.Module):
    """A softmax over experts: (N, E), not attention."""

    def __init__(self, channels=12, experts=3):
        super().__init__()
        self.gate = nn.Linear(channels, experts)

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        return x * F.softmax(self.gate(x.reshape(-1, x.shape[-1])), dim=-1).max(-1).values.view(*x.shape[:-1], 1)


class Vocabulary(nn.Module):
    """A classifier's softmax over 11 classes, (B, T, V), inside a submodule: not attention."""

    def __init__(self, channels=12, classes=11):
        super().__init__()
        self.logits = nn.Linear(channels, classes)

    def forward(self, x):
        return torch.softmax(self.logits(x), -1)


class HandWrittenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Embedding(20, 12)
        self.mixers = nn.ModuleList(GroupMixer() for _ in range(2))
        self.lookup, self.router, self.classes = MemoryLookup(), Router(), Vocabulary()

    def forward(self, tokens, memory_tokens):  # (B, T), (B, M) -> (B, T, V) probabilities, (B, T, T) root softmax
        x = self.stem(tokens)
        for mixer in self.mixers:
            x = x + mixer(x)
        x = x + self.lookup(x, self.stem(memory_tokens))
        x = self.router(x)
        return self.classes(x), F.softmax(x @ x.transpose(1, 2), dim=-1)  # the root's own softmax is not taken


def test_hand_written_softmax_attention_is_found_and_other_softmaxes_are_not():
    torch.manual_seed(0)
    model = HandWrittenNet().eval()
    tokens, memory = torch.randint(0, 20, (2, 5)), torch.randint(0, 20, (2, 7))
    with torch.no_grad():
        expected = model(tokens, memory)[0]
        with capture_attention(model) as capture:
            output = model(tokens, memory)[0]
    assert [(r.name, tuple(r.weights.shape)) for r in capture.records] == [
        ("mixers.0", (2, 3, 5, 5)), ("mixers.1", (2, 3, 5, 5)), ("lookup", (2, 1, 5, 7))]
    assert all(r.source == "softmax" and rows_sum_to_one(r.weights) for r in capture.records)
    assert torch.equal(output, expected)


# --- capture: the `attentions` capability; restoring everything ---------------------------------


class ReturnsItsMaps(nn.Module):
    """Attention by hand in the root module, returned with the output (as HF's output_attentions)."""

    def __init__(self):
        super().__init__()
        self.scores = nn.Parameter(torch.randn(2, 6, 6))  # (H, L, S)

    def forward(self, x):  # (B, S, C) -> (B, S, C), (B, H, L, S)
        maps = torch.softmax(self.scores, -1).expand(x.shape[0], -1, -1, -1)
        return (maps @ x[:, None]).mean(1), maps


def test_models_that_return_their_attentions_use_the_capability():
    torch.manual_seed(0)
    model, x = ReturnsItsMaps(), torch.randn(32, 6, 4)
    records = record_attention(model, (x, x), lambda m, batch: m(batch[0]), attentions=lambda m, batch: [m(batch[0])[1]])
    assert [(r.name, r.source, tuple(r.weights.shape)) for r in records] == [("attentions[0]", "capability", (32, 2, 6, 6))]
    subject = regression_subject("maps", model, (x, x), (x, x), capabilities=Capabilities(attentions=lambda m, batch: [m(batch[0])[1]]))
    subject.predict = lambda m, batch: (m(batch[0])[0], batch[1])
    assert run_check(get_check("attention")(), subject).status in ("pass", "warn")


def test_everything_is_restored_after_an_exception_inside_the_capture_or_the_forward():
    model = nn.ModuleList([CrossReader(), Decoder(alias=True)])
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    before = (F.softmax, torch.softmax, F.scaled_dot_product_attention, fused_attention, torch.backends.mha.get_fastpath_enabled())
    with pytest.raises(RuntimeError, match="boom"), capture_attention(model):
        assert not torch.backends.mha.get_fastpath_enabled() and "forward" in model[0].read.__dict__
        assert "softmax" in torch.Tensor.__dict__ and F.softmax is not before[0] and fused_attention is not before[3]
        raise RuntimeError("boom")
    with pytest.raises(Exception), capture_attention(model) as capture:  # noqa: B017 (torch raises AssertionError here)
        model[0](torch.randn(4, 2, 12), torch.randn(9, 2, 12), torch.zeros(3, 3, dtype=torch.bool))  # wrong mask shape
    after = (F.softmax, torch.softmax, F.scaled_dot_product_attention, fused_attention, torch.backends.mha.get_fastpath_enabled())
    assert all(a is b for a, b in zip(before, after)) and not capture.stack and hooks() == 0
    assert "forward" not in model[0].read.__dict__ and "softmax" not in torch.Tensor.__dict__


# --- attribution --------------------------------------------------------------------------------


class ReadsFirstHalf(nn.Module):
    """A learned query reads the token embeddings through MHA; the second half of the keys is padding."""

    def __init__(self, positions=8):
        super().__init__()
        self.tokens = nn.Embedding(16, 8)
        self.query = nn.Parameter(torch.randn(1, 1, 8))
        self.read = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 1)
        self.register_buffer("second_half", torch.arange(positions) >= positions // 2)

    def forward(self, tokens):  # (B, S) -> (B,)
        x = self.tokens(tokens)
        padding = self.second_half.expand(len(tokens), -1)
        return self.out(self.read(self.query.expand(len(tokens), -1, -1), x, x, key_padding_mask=padding)[0])[:, 0, 0]


def test_integrated_gradients_give_the_only_modality_the_output_reads_nearly_all_the_attribution():
    torch.manual_seed(0)
    tokens = torch.randint(0, 16, (32, 8))
    subject = regression_subject("first-half", ReadsFirstHalf(), (tokens, torch.randn(32)), (tokens, torch.randn(32)),
                                 capabilities=Capabilities(embedding_layer="tokens",
                                               token_modalities=lambda batch: {"first": torch.arange(8) < 4, "second": torch.arange(8) >= 4}))
    found = modality_attribution(subject, subject.model, (tokens, torch.randn(32)), examples=6, n_steps=24)
    assert found.shares["first"] >= 0.9 and found.shares["second"] <= 0.1
    assert found.token_shares == {"first": 0.5, "second": 0.5} and found.examples == 6
    assert found.relative_delta < 0.05


# --- the check on the samples and on the case book's models --------------------------------------

SMALL = {"moving-tokens": {"n_train_videos": 32, "n_eval_videos": 64},
         "astro-multimodal": {"n_train": 256, "n_eval": 64, "codebook_iters": 2},
         "sparse-field": {"n_train_fields": 16, "n_eval_fields": 16}}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_transformer_sample_gets_attention_maps_and_entropy_figures(name):
    torch.manual_seed(0)
    result = run_check(get_check("attention")(), build_subject(name, SMALL[name]), seed=0)
    assert result.status not in ("error", "skip"), result.error or result.summary
    kinds = [figure["kind"] for figure in result.figures]
    maps = [f for f in result.figures if f["kind"] == "images"]
    assert len(maps) == result.metrics["layers"] >= 2 and maps[0]["images"][0]["label"] == "layer 0 / head 0"
    assert all(len(image["pixels"]) <= 64 and len(image["pixels"][0]) <= 64 for f in maps for image in f["images"])
    (entropy,) = [f for f in result.figures if "entropy" in f["title"] and f["kind"] == "bar"]
    assert entropy["labels"][:2] == ["L0 h0", "L0 h1"] and len(entropy["values"]) == result.metrics["heads"] and "table" in kinds
    assert 0.5 < result.metrics["max_layer_entropy"] <= 1.0  # untrained: close to uniform
    if name != "sparse-field":  # it declares no modalities
        assert any(f["kind"] == "bar" and "Modality" in f["title"] for f in result.figures)
        assert all(0.5 < result.metrics[k] < 2 for k in result.metrics if k.startswith("attention_ratio."))
    if name == "moving-tokens":  # tokens: attributed (astro's redshift is an argmax: noted, not attributed)
        assert result.metrics["attribution_share.frame 0"] > 0.05 and result.metrics["attribution_relative_delta"] < 0.05
        assert all("cannot be drawn" not in figure_svg(figure) for figure in result.figures if figure["kind"] != "table")
    if name == "astro-multimodal":
        assert any("not differentiable" in note for note in result.notes)


def casebook():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("attention_cases", Path(__file__).parents[1] / "checks/attention/cases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_collapse_prescribes_warmup_cosine_and_neglect_gives_advice_without_fixes():
    cases = casebook()
    collapsed = run_check(get_check("attention")(), cases.case_one_layer_collapsed())
    assert collapsed.status == "warn" and collapsed.fixes == ["warmup-cosine"]
    assert collapsed.metrics["collapsed_heads"] == 2 and collapsed.metrics["min_layer_entropy"] < 0.01
    assert any("Zhai" in note for note in collapsed.notes)
    ignored = run_check(get_check("attention")(), cases.case_ignored_modality())
    assert ignored.status == "fail" and ignored.fixes == [] and "'b'" in ignored.summary
    assert ignored.metrics["attention_ratio.b"] < 1e-6 and ignored.metrics["attention_ratio.a"] > 1.5
    assert any("modality" in note for note in ignored.notes)
    # Once the recipe warms up, the fix no longer applies and is not prescribed.
    subject = cases.case_one_layer_collapsed()
    subject.recipe.schedule, subject.recipe.warmup_steps = "warmup-cosine", 10
    assert run_check(get_check("attention")(), subject).fixes == []


def test_a_model_without_attention_is_skipped_with_the_reason():
    x = torch.randn(16, 3)
    result = run_check(get_check("attention")(), regression_subject("mlp", nn.Sequential(nn.Linear(3, 8), nn.Softmax(-1)), (x, x), (x, x)))
    assert result.status == "skip" and "no attention found" in result.summary


@pytest.mark.slow
def test_warmup_cosine_removes_the_entropy_collapse_of_the_failing_moving_tokens_recipe():
    """The failing recipe (constant LR 1e-2, post-LN) collapses the first layer's attention; the same
    model, data and seed trained with the prescribed warmup-cosine and nothing else does not.
    600 steps on 1024 videos per arm, ~15 s each."""
    from modeldoctor.core.fix import apply_fixes
    from modeldoctor.probes.training import seed_everything, train

    def trained(fixes):
        seed_everything(0)
        subject = apply_fixes(build_subject("moving-tokens", {"n_train_videos": 1024}), fixes, copy=False)
        train(subject, 600)
        return run_check(get_check("attention")(), subject)

    before, after = trained([]), trained(["warmup-cosine"])
    assert before.status == "warn" and before.fixes == ["warmup-cosine"], before.summary
    assert before.metrics["min_layer_entropy"] < 0.08
    assert after.metrics["min_layer_entropy"] > max(0.25, 4 * before.metrics["min_layer_entropy"]), after.summary
    assert after.status == "pass" and after.fixes == []
