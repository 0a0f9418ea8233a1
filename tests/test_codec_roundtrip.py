"""codec-roundtrip beyond the case book: metric values, accumulation, figures, and the codebook fixes."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from modeldoctor import (
    Codec,
    apply_fixes,
    load_checkpoint,
    register_subject,
    regression_subject,
    run_check,
    save_checkpoint,
)
from modeldoctor.checks.codec_roundtrip import (
    CodecRoundtrip,
    id_ranges,
    image_fidelity,
    signal_fidelity,
)
from modeldoctor.core.capabilities import Capabilities
from modeldoctor.core.registry import SUBJECTS, get_fix, load_plugins
from modeldoctor.engine.casebook import load_cases
from modeldoctor.nn.vq import (
    PatchTokenizer,
    ScalarBinning,
    VectorQuantizer,
    kmeans,
)
from modeldoctor.probes.codebooks import recorded_latents
from modeldoctor.probes.numerics import code_usage

load_plugins()  # registers the fixes the runner filters prescriptions by
CASES, _ = load_cases(Path(__file__).resolve().parents[1] / "checks" / "codec-roundtrip")


def check(subject, **options):
    return run_check(CodecRoundtrip(**options), subject, seed=0)


def scalar_subject(codec: Codec):
    x = torch.rand(8, 1)
    return regression_subject("scalars", nn.Linear(1, 1), (x, x), (x, x), codecs={"z": codec})


def codebook(subject) -> torch.Tensor:
    return subject.model.image_tokenizer.quantizer.embedding.weight.detach().clone()


# --- measuring --------------------------------------------------------------------------------

def test_code_usage_matches_hand_computed_values():
    found = code_usage(torch.tensor([4, 2, 2, 0]))
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2, perplexity = 2^1.5
    assert found["codes_used"] == 3 and found["dead_codes"] == 1 and found["usage"] == 0.75
    assert found["perplexity"] == pytest.approx(2**1.5) and found["perplexity_ratio"] == pytest.approx(2**1.5 / 4)
    assert found["usage_ceiling"] == pytest.approx(1 - 0.75**8)
    assert id_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"


def test_fidelity_kernels_match_hand_computed_values():
    codec = Codec(kind="image", encode=None, decode=None, num_codes=1, samples=[], value_range=(0.0, 1.0))
    pairs = [(torch.zeros(1, 2, 2, dtype=torch.double), torch.full((1, 2, 2), 0.1, dtype=torch.double))]
    assert image_fidelity(pairs, codec)["psnr_db"] == pytest.approx(20.0)  # MSE 0.01 on a range of 1
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.double)
    assert signal_fidelity([(x, 2 * x)], codec) == pytest.approx({"correlation": 1.0, "relative_error": 1.0})
    assert signal_fidelity([(x, torch.full_like(x, 2.5))], codec)["correlation"] == pytest.approx(0.0)


def test_metrics_of_a_tiny_scalar_codec():
    values = torch.tensor([0.5, 0.5, 0.5, 0.5, 1.5, 1.5, 2.5, 2.5])  # bins 0, 0, 0, 0, 1, 1, 2, 2 of 4
    result = check(scalar_subject(ScalarBinning(0.0, 4.0, 4).codec([values[:4], values[4:]])))
    m = result.metrics
    assert (m["z.codes_used"], m["z.dead_codes"], m["z.tokens"], m["z.unused_codes"]) == (3, 1, 8, "3")
    assert m["z.perplexity"] == pytest.approx(2**1.5)
    assert m["z.within_half_bin"] == 1.0 and m["z.max_error_bins"] == 0.0
    assert m["z.psnr_expected_db"] == pytest.approx(10 * math.log10(12 * 16))  # range 4, bin width 1
    assert result.status == "pass", result.summary


def test_usage_is_accumulated_across_batches():
    """Each batch falls in one of 16 bins (1/16 used per batch); together they use every bin."""
    batches = [torch.full((32,), (i + 0.5) / 16) + torch.linspace(-0.01, 0.01, 32) for i in range(16)]
    result = check(scalar_subject(ScalarBinning(0.0, 1.0, 16).codec(batches)))
    assert result.metrics["z.usage"] == 1.0 and result.metrics["z.dead_codes"] == 0
    assert result.status == "pass", result.summary


def test_usage_thresholds_scale_with_the_tokens_available():
    """64 values cannot use 1024 bins: usage 6% is all they can reach, so it does not fail."""
    values = torch.rand(64, generator=torch.Generator().manual_seed(0))
    result = check(scalar_subject(ScalarBinning(0.0, 1.0, 1024).codec([values])))
    assert result.metrics["z.usage"] < 0.1 and result.metrics["z.usage_ceiling"] < 0.1
    assert result.status == "pass", result.summary


def test_too_few_codes_used_fails_and_names_the_codec():
    values = torch.rand(2048, generator=torch.Generator().manual_seed(0)) * 0.05  # 5% of the range
    result = check(scalar_subject(ScalarBinning(0.0, 1.0, 256).codec([values])))
    assert result.status == "fail"
    assert "codec 'z' uses 13 of 256 codes (5.1%)" in result.summary
    assert result.fixes == [], "no codebook fix applies to a codec without a module"


# --- judging and evidence ---------------------------------------------------------------------

def test_summary_names_the_collapsed_codec_with_its_usage_and_prescribes_the_fixes():
    result = check(CASES["collapsed_vq_image"]())
    assert result.status == "fail"
    assert "codec 'image' uses 2 of 64 codes (3.1%)" in result.summary
    assert result.metrics["image.usage"] == pytest.approx(2 / 64) and result.metrics["image.dead_codes"] == 62
    assert result.metrics["worst_codec"] == "image"
    assert result.fixes == ["codebook-reset", "codebook-resize"]
    kinds = {f["kind"]: f for f in result.figures}
    assert len(kinds["images"]["images"]) == 8 and kinds["images"]["images"][0]["label"] == "original 0"
    values = kinds["bar"]["values"]
    assert len(values) == 64 and values == sorted(values, reverse=True) and values[2] == 0
    assert kinds["table"]["rows"][0][-1] == "2-63"


def test_fidelity_failure_without_usage_collapse_gives_advice_not_fixes():
    result = check(CASES["signal_decoder_layout_bug"]())
    assert result.status == "fail" and "correlation 0.0" in result.summary
    assert result.fixes == [] and any("layout" in note for note in result.notes)
    assert [f["kind"] for f in result.figures] == ["line", "bar", "table"]
    assert len(result.figures[0]["series"]) == 4


def test_usage_bars_are_capped_at_256_for_big_codebooks():
    values = torch.rand(8192, generator=torch.Generator().manual_seed(0))
    result = check(scalar_subject(ScalarBinning(0.0, 1.0, 1024).codec([values])))
    bar = next(f for f in result.figures if f["kind"] == "bar")
    assert len(bar["values"]) == 256 and "groups of 4 ranks" in bar["title"]


def test_wrong_shapes_and_codes_out_of_range_fail():
    binning = ScalarBinning(0.0, 1.0, 8)
    codec = binning.codec([torch.rand(64) * 2])  # half the values beyond the range
    codec.encode = lambda x: torch.floor(x / binning.bin_width).long()  # no clamp: codes up to 15
    result = check(scalar_subject(codec))
    assert result.status == "fail" and "codes outside [0, 8)" in result.summary
    codec = binning.codec([torch.rand(64)])
    codec.decode = lambda codes: binning.decode(codes).unsqueeze(1)
    assert "decodes to another shape ((64,) -> (64, 1))" in check(scalar_subject(codec)).summary


def test_skips_without_codecs():
    x = torch.rand(8, 1)
    result = check(regression_subject("plain", nn.Linear(1, 1), (x, x), (x, x)))
    assert result.status == "skip" and "codecs" in result.summary


# --- the reference VQ -------------------------------------------------------------------------

def test_vector_quantizer_passes_gradients_straight_through_and_restarts_dead_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 2, restart_dead_codes=True)
    z = (torch.randn(64, 2) + 5.0).requires_grad_()  # far from the ±1/16 codebook
    z_q, _, loss = vq(z)
    z_q.sum().backward(retain_graph=True)
    assert torch.equal(z.grad, torch.ones_like(z)), "straight-through: dz_q/dz = 1"
    loss.backward()
    assert vq.embedding.weight.grad.abs().sum() > 0, "the codebook loss reaches the codes"
    assert (vq.encode(z.detach()).unique().numel()) > 4, "dead codes restarted onto the batch's latents"
    centres = kmeans(torch.tensor([[0.0], [0.1], [10.0], [10.1]]), 2)
    assert sorted(centres.flatten().tolist()) == pytest.approx([0.05, 10.05])


def test_latents_are_recorded_once_through_forward_and_the_recorder_is_removed():
    quantizer = VectorQuantizer(4, 2)
    with recorded_latents(quantizer) as latents:
        quantizer(torch.randn(3, 5, 2))  # forward calls encode: recorded once
        quantizer.encode(torch.randn(7, 2))
    assert [tuple(z.shape) for z in latents] == [(15, 2), (7, 2)]
    assert "encode" not in quantizer.__dict__ and not quantizer._forward_hooks and not quantizer._forward_pre_hooks


# --- codebook-reset ---------------------------------------------------------------------------

def test_codebook_reset_removes_the_collapse_on_a_copy():
    subject = CASES["collapsed_vq_image"]()
    before = codebook(subject)
    patched = apply_fixes(subject, ["codebook-reset"])
    result = check(patched)
    assert result.status == "pass", result.summary
    assert result.metrics["image.usage"] >= 0.25
    assert patched.model.image_tokenizer.quantizer.restart_dead_codes
    # The original subject, its model and its codecs are untouched.
    assert torch.equal(codebook(subject), before) and not subject.model.image_tokenizer.quantizer.restart_dead_codes
    assert subject.codecs["image"].encode.__self__ is subject.model.image_tokenizer
    assert check(subject).status == "fail"
    # The recorder is borrowed, never leaked.
    quantizer = patched.model.image_tokenizer.quantizer
    assert "encode" not in quantizer.__dict__ and not quantizer._forward_hooks and not quantizer._forward_pre_hooks


def test_codebook_reset_restarts_only_dead_codes_when_most_are_alive():
    subject = CASES["kmeans_vq_image"]()
    with torch.no_grad():
        subject.model.image_tokenizer.quantizer.embedding.weight[:20] = 50.0  # 20 codes that never win
    assert check(subject).metrics["image.dead_codes"] == 20
    before = codebook(subject)
    patched = apply_fixes(subject, ["codebook-reset"])
    after = codebook(patched)
    assert torch.equal(after[20:], before[20:]), "live codes stay where they are"
    assert after[:20].max() < 2.0
    assert check(patched).metrics["image.dead_codes"] < 20


# --- codebook-resize --------------------------------------------------------------------------

class TokenModel(nn.Module):
    """A tokenizer, a token embedding and a logits head whose vocabulary is the codebook size."""

    def __init__(self, codes: int):
        super().__init__()
        self.tokenizer = PatchTokenizer(codes, patch=2, dims=1)
        self.embed = nn.Embedding(codes, 4)
        self.logits = nn.Linear(4, codes)
        self.from_codes = nn.Linear(codes, 3)  # reads one-hot codes
        self.readout = nn.Linear(1, 1)

    def forward(self, x):  # (B, 1) -> (B, 1)
        return self.readout(x)


@pytest.fixture
def token_subject():
    """Registers `test-codec-tokens` for the checkpoint round trip and removes it afterwards."""

    @register_subject("test-codec-tokens")
    def build(config: dict):
        torch.manual_seed(0)
        model = TokenModel(config.get("codes", 8))
        samples = [torch.randn(4, 16, generator=torch.Generator().manual_seed(1))]
        x = torch.rand(8, 1)
        return regression_subject(
            "test-codec-tokens", model, (x, x), (x, x), config=config,
            codecs={"spectrum": model.tokenizer.codec(samples, module="tokenizer")},
            capabilities=Capabilities(codebook_dependents={"spectrum": ["embed", "logits", "from_codes"]}),
        )

    yield build
    SUBJECTS.pop("test-codec-tokens", None)


def test_codebook_resize_grows_the_codebook_and_its_dependents_and_round_trips(token_subject, tmp_path):
    subject = token_subject({"codes": 8})
    old = {name: t.detach().clone() for name, t in subject.model.state_dict().items()}
    patched = apply_fixes(subject, ["codebook-resize"])
    state = patched.model.state_dict()
    assert set(state) == set(old), "keys keep their names"
    assert patched.codecs["spectrum"].num_codes == 128 and subject.codecs["spectrum"].num_codes == 8
    assert patched.model.tokenizer.quantizer.num_codes == 128
    assert state["tokenizer.quantizer.embedding.weight"].shape == (128, 2)
    assert state["embed.weight"].shape == (128, 4) and state["logits.weight"].shape == (128, 4)
    for key in ("tokenizer.quantizer.embedding.weight", "embed.weight", "logits.weight", "logits.bias"):
        assert torch.equal(state[key][:8], old[key]), f"{key} keeps its old rows"
    assert state["from_codes.weight"].shape == (3, 128) and torch.equal(state["from_codes.weight"][:, :8], old["from_codes.weight"])
    assert not state["from_codes.weight"][:, 8:].any(), "new inputs start at zero weight"
    assert subject.model.embed.weight.shape == (8, 4), "the original is untouched"
    codes = patched.codecs["spectrum"].encode(torch.randn(4, 16))
    assert codes.max() < 128 and patched.codecs["spectrum"].encode.__self__ is patched.model.tokenizer
    # The checkpoint stores the new shapes; loading replays the fix before loading the weights.
    loaded = load_checkpoint(save_checkpoint(tmp_path / "resized.pt", patched)).subject
    assert loaded.fixes_applied == ["codebook-resize"] and loaded.codecs["spectrum"].num_codes == 128
    for key, value in state.items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    x = torch.randn(4, 16)
    assert torch.equal(loaded.codecs["spectrum"].encode(x), patched.codecs["spectrum"].encode(x))


def test_codebook_resize_factor_and_bad_dependents_come_from_the_subject(token_subject):
    subject = token_subject({"codes": 8})
    subject.capabilities = replace(subject.capabilities, codebook_resize_factor={"spectrum": 2})
    assert apply_fixes(subject, ["codebook-resize"]).codecs["spectrum"].num_codes == 16
    subject.capabilities = Capabilities(codebook_dependents={"spectrum": ["readout"]})
    assert "dependent 'readout' is not an nn.Embedding/nn.Linear with a dimension of 8" in get_fix("codebook-resize")().applicable(subject)


@pytest.mark.parametrize("slug", ["codebook-reset", "codebook-resize"])
def test_codebook_fixes_explain_why_they_do_not_apply(slug):
    fix = get_fix(slug)()
    assert "codec 'redshift' declares no `module`" in fix.applicable(CASES["scalar_binning"]())
    subject = CASES["kmeans_vq_image"]()
    tokenizer = subject.model.image_tokenizer
    subject.codecs = {"image": Codec(kind="image", encode=lambda x: tokenizer.encode(x), decode=tokenizer.decode,
                                     num_codes=64, samples=[], module="image_tokenizer")}
    assert "`encode` is not the bound method `image_tokenizer.encode`" in fix.applicable(subject)
    assert fix.applicable(CASES["kmeans_vq_image"]()) is None
    if slug == "codebook-resize":  # growing K is refused until the subject says what reads the codes
        undeclared = CASES["kmeans_vq_image"]()
        undeclared.capabilities = Capabilities()
        assert "capabilities.codebook_dependents" in fix.applicable(undeclared)
