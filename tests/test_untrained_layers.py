"""untrained-layers: init fingerprints (KS, std, norm dispersion), the judge's edges, the --against path."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modeldoctor.checks.untrained_layers import UntrainedLayers
from modeldoctor.core.check import CheckContext
from modeldoctor.core.evidence import Weights
from modeldoctor.core.results import Measurement, derive
from modeldoctor.engine.casebook import load_cases
from modeldoctor.engine.runner import run_check
from modeldoctor.probes.init_fingerprint import (
    candidates,
    compare_to_base,
    is_constant,
    match_init,
    norm_dispersion_p,
    relative_change,
)
from modeldoctor.probes.weight_stats import compute_stats

CASES, _ = load_cases(Path(__file__).resolve().parents[1] / "checks" / "untrained-layers")
CHECK = UntrainedLayers()


def units(weights: Weights, check: UntrainedLayers = CHECK) -> dict[str, dict]:
    """tensor name -> its unit (every tested weight, at init or not) of a measurement."""
    from modeldoctor.probes.weight_layout import layers

    found = {}
    for layer in layers(weights):
        if layer.kind in ("linear", "conv", "embedding", "attention-in-proj", "rnn"):
            for leaf, name in layer.tensors.items():
                if leaf in ("weight", "in_proj_weight") or leaf.startswith("weight_"):
                    unit = check.test_weight(weights, layer, name, None)
                    if unit:
                        found[name] = unit
    return found


def weights_of(model: nn.Module, **fields) -> Weights:
    return Weights.from_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()}, **fields)


# --- the fingerprints on synthetic samples ---------------------------------------------------------

@pytest.mark.parametrize(("draw", "expected"), [
    (lambda w: nn.init.kaiming_uniform_(w, a=math.sqrt(5)), "PyTorch default"),
    (lambda w: nn.init.normal_(w, 0, 0.02), "N(0, 0.02)"),
    (lambda w: nn.init.trunc_normal_(w, std=0.02, a=-0.04, b=0.04), "truncated N(0, 0.02)"),
    (lambda w: nn.init.xavier_uniform_(w), "xavier_uniform"),
    (lambda w: nn.init.xavier_normal_(w), "xavier_normal"),
    (lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"), "kaiming_normal (relu, fan_out)"),
])
def test_ks_names_the_initialization_a_weight_was_drawn_from(draw, expected):
    torch.manual_seed(0)
    w = draw(torch.empty(96, 48))  # fan_in 48, fan_out 96: every candidate has its own scale
    st = compute_stats("w", w)
    match = match_init(st.sample, candidates(tuple(w.shape)))
    assert expected in match.init and match.p > 0.05 and match.d < 0.03
    assert match.std_z(st.std, st.numel) < 4 and norm_dispersion_p(st) > 0.01


def test_initializer_range_and_rnn_hidden_size_add_their_candidates():
    torch.manual_seed(0)
    w = torch.empty(64, 64).normal_(0, 0.05)
    assert "N(0, 0.05)" in match_init(w.flatten().double().numpy(), candidates((64, 64), init_range=0.05)).init
    assert match_init(w.flatten().double().numpy(), candidates((64, 64))).p < 1e-6  # without it, nothing fits
    gru = nn.GRU(8, 40)
    sample = gru.weight_ih_l0.detach().flatten().double().numpy()  # (120, 8): U(±1/√40), not U(±1/√8)
    assert "RNN default" in match_init(sample, candidates((120, 8), hidden=40)).init


def test_a_shifted_or_rescaled_sample_is_rejected():
    torch.manual_seed(0)
    w = torch.empty(64, 64).uniform_(-0.125, 0.125)
    for moved in (w * 1.15, w + 0.03 * torch.randn(64, 64).sign()):
        st = compute_stats("w", moved)
        match = match_init(st.sample, candidates((64, 64)))
        assert match.p < 0.01 or match.std_z(st.std, st.numel) > 5


def test_norm_dispersion_sees_structure_the_histogram_does_not():
    torch.manual_seed(0)
    w = torch.empty(128, 64).uniform_(-0.125, 0.125)
    assert norm_dispersion_p(compute_stats("w", w)) > 0.01
    scaled = w * torch.linspace(0.8, 1.2, 128)[:, None]  # rows with their own scales, same histogram roughly
    assert norm_dispersion_p(compute_stats("w", scaled)) < 1e-4


def test_exact_tests_constant_and_relative_change():
    assert is_constant(compute_stats("w", torch.ones(64)), 1.0) and is_constant(compute_stats("b", torch.zeros(64)), 0.0)
    assert not is_constant(compute_stats("w", torch.ones(64) + 1e-6 * torch.arange(64.0)))
    assert not is_constant(compute_stats("w", torch.tensor([1.0, -1.0, 1.0])))  # mean ≠ ±abs_max
    w0 = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    assert relative_change(w0 + torch.tensor([[0.0, 1.0], [0.0, 0.0]]), w0) == pytest.approx(1 / 5)
    assert relative_change(torch.zeros(2), torch.zeros(2)) == 0.0 and relative_change(torch.ones(2), torch.zeros(2)) == math.inf
    frozen = torch.randn(32, 32)
    assert relative_change(frozen.bfloat16(), frozen) == 0.0  # saved in bf16, compared in bf16


# --- the reference numbers on the case book ------------------------------------------------------

def test_reference_trained_first_layer_rejected_frozen_one_accepted():
    trained = units(CASES["healthy_trained_mlp"]())["0.weight"]
    frozen = units(CASES["mlp_first_layer_frozen"]())["0.weight"]
    assert trained["state"] == "trained" and trained["d"] > 0.05 and trained["p"] < 1e-4  # REFERENCE: D≈0.05, p≈1e-4
    assert frozen["state"] == "at-init" and frozen["d"] < 0.02 and frozen["p"] > 0.5  # REFERENCE: D≈0.01, p≈0.8


@pytest.mark.parametrize("case", ["healthy_trained_mlp", "convnet_batchnorm_trained_in_train_mode", "tiny_transformer_trained"])
def test_trained_weights_are_rejected_with_margin(case):
    o = CHECK.options
    for name, unit in units(CASES[case]()).items():
        assert unit["state"] != "at-init", name
        assert (unit["p"] < o["p_min"] / 5 or unit["std_z"] > 1.5 * o["max_std_z"] or unit["norms_p"] < o["p_min"] / 5), name


# --- architectures the thresholds were not tuned on -----------------------------------------------

class GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru, self.head = nn.GRU(8, 48, batch_first=True), nn.Linear(48, 8)

    def forward(self, x):  # (B, T, 8) -> (B, 8)
        return self.head(self.gru(x)[0][:, -1])


class BagNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag, self.norm, self.out = nn.EmbeddingBag(300, 32), nn.LayerNorm(32), nn.Linear(32, 48)

    def forward(self, x):  # (B, L) token ids -> (B, 48)
        return self.out(self.norm(self.bag(x)))


def conv1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(8, 32, 5, padding=2), nn.GELU(), nn.Conv1d(32, 32, 5, padding=2, groups=2), nn.GELU(),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 8))


@pytest.mark.parametrize(("build", "x_shape", "tokens"), [(GRUNet, (64, 6, 8), False), (conv1d, (64, 8, 16), False),
                                                           (BagNet, (128, 5), True)])
@pytest.mark.parametrize("seed", [0, 1])
def test_no_false_alarm_on_untuned_architectures(build, x_shape, tokens, seed):
    torch.manual_seed(seed)
    model, g = build(), torch.Generator().manual_seed(seed)
    x = torch.randint(0, 300, x_shape, generator=g) if tokens else torch.randn(*x_shape, generator=g)
    with torch.no_grad():
        y = torch.tanh(torch.randn_like(model(x)) + model(x))  # a target the model can partly fit
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()
    result = run_check(UntrainedLayers(), weights_of(model))
    # An embedding table at N(0, 1) barely moves in 60 steps: at most a warn, which says so.
    assert result.status in (("pass", "warn") if tokens else ("pass",)), result.summary


def test_a_frozen_middle_layer_beside_trained_ones_is_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 16))
    model[2].requires_grad_(False)
    x = torch.randn(128, 16)
    y = torch.sin(x)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()
    result = run_check(UntrainedLayers(), weights_of(model))
    assert result.status == "fail" and result.findings[0].where == ("2.weight",), result.summary


# --- the judge's edges on constructed metrics -------------------------------------------------------

def unit(layer, state="at-init", ratio=0.5, exact=False, d=0.01, p=0.8):
    u = {"layer": layer, "tensor": f"{layer}.weight", "kind": "linear", "state": state, "init": "U(±0.1) PyTorch default",
         "std": 0.05, "scale_ratio": None if exact else ratio, "d": d, "p": p}
    return {**u, "exact": True, "init": "weight 1, bias 0"} if exact else u


def metrics(at_init=(), trained=0, moved=0, bn=(), base=None, tested=None):
    at_init = list(at_init)
    return {"tested": len(at_init) + trained + moved if tested is None else tested, "skipped_small": 2,
            "skipped_unknown_kind": 0, "at_init": len(at_init), "trained": trained, "moved": moved, "inconclusive": 0,
            "at_init_units": at_init, "closest": [], "bn_default": list(bn), "base": base}


def judged(m, **options):
    findings = UntrainedLayers(**options).judge(Measurement(metrics=m))
    return findings, derive(findings)


def test_pass_when_nothing_matches_init_and_says_what_was_skipped():
    findings, (status, summary) = judged(metrics(trained=3, moved=1))
    assert status == "pass" and len(findings) == 1 and "none of 4" in summary and "2 too small" in summary


def test_a_layer_at_init_beside_trained_ones_fails_named():
    findings, (status, summary) = judged(metrics([unit("encoder.0")], trained=2))
    assert status == "fail" and "layer 'encoder.0' still looks like its initialization" in summary
    assert findings[0].where == ("encoder.0.weight",) and "requires_grad" in findings[0].advice[0]
    assert not findings[0].fixes  # no weights fix exists for a frozen layer


def test_a_larger_scale_layer_at_init_only_warns():
    _, (status, summary) = judged(metrics([unit("embed", ratio=12.0)], trained=2))
    assert status == "warn" and "12.0x the scale" in summary and "--against" in summary


def test_a_small_weight_matching_a_normal_init_only_warns():
    small, large = {**unit("o_proj"), "normal": True, "numel": 1024}, {**unit("q_proj"), "normal": True, "numel": 65536}
    _, (status, summary) = judged(metrics([small], trained=3))
    assert status == "warn" and "normal init plus the noise of training stays normal" in summary
    findings, (status, _) = judged(metrics([small, large], trained=3))
    assert [(f.status, f.where) for f in findings] == [("fail", ("q_proj.weight",)), ("warn", ("o_proj.weight",))]


def test_exact_norm_at_init_beside_trained_weights_fails():
    _, (status, summary) = judged(metrics([unit("ln", exact=True)], trained=1))
    assert status == "fail" and "exactly weight 1, bias 0" in summary


def test_every_layer_at_init_is_the_whole_checkpoint():
    findings, (status, summary) = judged(metrics([unit("a"), unit("b"), unit("c")], bn=[{"layer": "bn", "tensors": ["bn.running_mean", "bn.running_var"]}]))
    assert status == "fail" and summary.startswith("the whole checkpoint looks untrained") and len(findings) == 1
    assert "bn.running_var" in findings[0].where


def test_one_weight_at_init_with_nothing_else_testable_warns():
    _, (status, summary) = judged(metrics([unit("embedding", ratio=None)]))
    assert status == "warn" and "nothing else in the checkpoint clearly trained" in summary


def test_at_init_beside_weights_that_moved_only_slightly_warns():
    _, (status, _) = judged(metrics([unit("a", ratio=None), unit("b", ratio=None)], moved=3))
    assert status == "warn"
    _, (status, _) = judged(metrics([unit(str(i), ratio=None) for i in range(20)], moved=1))
    assert status == "fail"  # 20 of 21 at init: the whole checkpoint, a chance deviation aside


def test_batchnorm_statistics_at_defaults_fail_with_the_buffers():
    findings, (status, summary) = judged(metrics(trained=3, bn=[{"layer": "bn1", "tensors": ["bn1.running_mean", "bn1.running_var"]}]))
    assert status == "fail" and "never updated" in summary and findings[0].where == ("bn1.running_mean", "bn1.running_var")


def base_summary(compared=6, changed=6, unchanged=(), other=(), missing=0, mismatched=0):
    return {"compared": compared, "changed": changed, "unchanged": compared - changed, "unchanged_tensors": list(unchanged),
            "unchanged_other": list(other), "unchanged_layers": list(dict.fromkeys(n.rpartition(".")[0] for n in unchanged)),
            "missing": missing, "missing_tensors": [f"new{i}.weight" for i in range(missing)], "mismatched": mismatched,
            "mismatched_tensors": ["head.weight"] * mismatched, "median_change": 0.5,
            "smallest_change": None}


def test_against_edges():
    _, (status, summary) = judged(metrics(base=base_summary()))
    assert status == "pass" and "every one of the 6 tensors" in summary
    findings, (status, summary) = judged(metrics(base=base_summary(changed=2, unchanged=["enc.0.weight", "enc.0.bias", "enc.1.weight", "enc.1.bias"])))
    assert status == "warn" and "deliberate" in summary and "'enc.0', 'enc.1'" in summary and len(findings[0].where) == 4
    _, (status, summary) = judged(metrics(base=base_summary(changed=0, unchanged=["a.weight"], other=["pe"])))
    assert status == "fail" and summary.startswith("nothing changed")
    _, (status, summary) = judged(metrics(base=base_summary(compared=0, changed=0, missing=3, mismatched=1)))
    assert status == "warn" and "none of this checkpoint's tensors" in summary


def test_against_judges_tensors_the_base_lacks_by_ks():
    """A new head (absent from the base) left at init, beside an encoder that changed: the head fails, by KS."""
    torch.manual_seed(0)
    encoder, head = nn.Linear(32, 64), nn.Linear(64, 32)
    base = Weights.from_state_dict({"encoder.weight": encoder.weight.detach().clone(), "encoder.bias": encoder.bias.detach().clone(),
                                    "old_head.weight": torch.zeros(3, 64)})
    with torch.no_grad():
        encoder.weight.add_(0.05 * torch.randn_like(encoder.weight))
        encoder.bias.add_(0.05)
    state = {"encoder.weight": encoder.weight.detach(), "encoder.bias": encoder.bias.detach(),
             "head.weight": head.weight.detach(), "head.bias": head.bias.detach()}
    result = run_check(UntrainedLayers(), Weights.from_state_dict(state, base=base))
    assert result.status == "fail" and result.findings[0].where == ("head.weight",), result.summary
    assert result.metrics["base"]["missing"] == 2 and result.metrics["base"]["changed"] == 2


def test_against_reports_mismatched_and_missing_tensors_without_crashing():
    torch.manual_seed(0)
    current = {"a.weight": torch.randn(8, 8), "b.weight": torch.randn(4, 8), "c.weight": torch.randn(8), "n.num_batches_tracked": torch.tensor(3)}
    base = Weights.from_state_dict({"a.weight": current["a.weight"] + 1, "b.weight": torch.randn(3, 8), "c.weight": torch.randn(8).int()})
    summary, changes = compare_to_base(Weights.from_state_dict(current), base, rtol=1e-7)
    assert set(changes) == {"a.weight"} and summary["mismatched"] == 2 and summary["missing"] == 0
    assert summary["mismatched_tensors"] == ["b.weight", "c.weight"] and "b.weight [4, 8] vs base [3, 8] float32" in summary["mismatched_shapes"]
    result = run_check(UntrainedLayers(), Weights.from_state_dict(current, base=base))
    assert result.status != "error", result.error


def test_frozen_tensors_saved_in_another_precision_still_count_as_unchanged():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    base = weights_of(model)
    with torch.no_grad():
        model[1].weight.add_(0.01)
    state = {k: v.detach().clone().bfloat16() for k, v in model.state_dict().items()}
    result = run_check(UntrainedLayers(), Weights.from_state_dict(state, base=base))
    assert result.status == "warn" and set(result.findings[0].where) == {"0.weight", "0.bias", "1.bias"}


def test_hf_initializer_range_comes_from_the_config_and_zero_weights_are_exact():
    torch.manual_seed(0)
    state = {"proj.weight": torch.randn(64, 64) * 0.05, "lora_B.weight": torch.zeros(64, 8), "out.weight": torch.randn(64, 64) * 0.3}
    weights = Weights.from_state_dict(state, extra={"hf_config": {"initializer_range": 0.05}})
    m = UntrainedLayers().measure(weights, CheckContext()).metrics
    at_init = {u["tensor"]: u for u in m["at_init_units"]}
    assert m["initializer_range"] == 0.05 and "N(0, 0.05)" in at_init["proj.weight"]["init"]
    assert at_init["lora_B.weight"]["exact"] and m["trained"] == 1  # out.weight: N(0, 0.3) is no init
    assert np.isfinite(m["trained_median_std"])


def test_case_results_are_json_with_figures_and_every_finding_says_where():
    for name, build in CASES.items():
        result = run_check(UntrainedLayers(), build())
        json.dumps(result.to_dict())
        assert result.figures and result.status != "error", name
        assert all(f.where for f in result.findings if f.status != "pass"), name
    bn = run_check(UntrainedLayers(), CASES["batchnorm_trained_in_eval_mode"]()).metrics["bn_default"]
    assert [b["layer"] for b in bn] == ["1", "4"] and bn[0]["num_batches_tracked"] == 0
