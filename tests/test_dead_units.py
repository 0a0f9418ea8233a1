"""dead-units: zero rows, zero scales and faded pairs per layer; consumer pairing; reinit-dead-units revives them."""
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from modeldoctor import Weights, run_check
from modeldoctor.checks.dead_units import DeadUnits
from modeldoctor.core.registry import get_fix, load_plugins
from modeldoctor.core.results import Measurement, derive
from modeldoctor.fixes.reinit_dead_units import ReinitDeadUnits
from modeldoctor.probes.unit_health import small, survey

load_plugins()
spec = importlib.util.spec_from_file_location("dead_units_cases", Path(__file__).parents[1] / "checks/dead-units/cases.py")
cases = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cases)


def weights_of(model: nn.Module) -> Weights:
    return cases.weights(model)


def metrics(worst=(), failing=(), warning=(), unrevivable=(), units=100) -> dict:
    return {"layers_checked": 3, "units_checked": units, "dead_units": sum(e["dead"] for e in worst), "layers_with_dead": len(worst),
            "paired_layers": 2, "worst": list(worst), "failing": list(failing), "warning": list(warning),
            "unrevivable": list(unrevivable), "dead_share": 0.0}


def entry(tensor, dead, units):
    return {"tensor": tensor, "kind": "linear", "units": units, "dead": dead, "share": dead / units, "zero": dead,
            "faded": 0, "consumer": None, "indices": [], "biases": []}


# --- judge -----------------------------------------------------------------------------------------

def test_judge_pass_warn_fail_and_where():
    check = DeadUnits()
    assert derive(check.judge(Measurement(metrics=metrics())))[0] == "pass"
    few = check.judge(Measurement(metrics=metrics([entry("a.weight", 1, 32)], warning=["a.weight"])))
    assert [f.status for f in few] == ["warn"] and few[0].where == ("a.weight",) and few[0].fixes == ("reinit-dead-units",)
    many = check.judge(Measurement(metrics=metrics([entry("a.weight", 8, 32), entry("b.weight", 1, 32)],
                                                   failing=["a.weight"], warning=["b.weight"], unrevivable=["b.weight"])))
    assert [f.status for f in many] == ["fail", "warn"]
    assert many[1].fixes == () and "no consumer" in many[1].advice[0], "a layer the fix cannot revive is not prescribed it"


def test_fail_share_is_strict_and_an_entirely_dead_layer_always_fails():
    model = cases.trained(cases.mlp())
    at = cases.zero_units(model, 2, list(range(4)))  # 4 of 32 = 12.5%
    assert run_check(DeadUnits(fail_share=0.125), weights_of(at)).status == "warn"
    assert run_check(DeadUnits(fail_share=0.12), weights_of(at)).status == "fail"
    whole = cases.zero_units(cases.trained(cases.mlp()), 2, list(range(32)))
    r = run_check(DeadUnits(fail_share=1.0), weights_of(whole))
    assert r.status == "fail" and r.findings[0].kind == "dead-layer"


def test_small_is_relative_to_the_nonzero_median():
    norms = torch.tensor([0.0, 1e-5, 1.0, 2.0, 3.0])
    assert small(norms, 1e-3).tolist() == [True, True, False, False, False]  # median of nonzero rows: 1.5
    assert small(torch.tensor([0.0, 0.0, 0.0, 1e-9]), 1e-3).tolist() == [True, True, True, False]  # not all zero: 1e-9 is the scale
    assert small(torch.zeros(3), 1e-3).all()


def test_non_finite_tensors_and_unknown_layouts_are_not_judged():
    model = cases.zero_units(cases.trained(cases.mlp()), 2, [0, 1, 2, 3, 4, 5])
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["2.weight"][10, 0] = float("nan")
    r = run_check(DeadUnits(), Weights.from_state_dict(state))
    assert r.status == "pass" and any("non-finite" in note for note in r.notes)
    assert run_check(DeadUnits(), Weights.from_state_dict({"tok_embeddings.weight": torch.randn(10, 4)})).status == "skip"


# --- consumer pairing ------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))


class Block(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.attn = Attention(d)
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Linear(32, d), nn.LayerNorm(d), nn.Linear(d, d))


def consumers(model: nn.Module) -> dict:
    return {units.tensor: units.consumer for units in survey(weights_of(model)) if units.kind == "linear"}


def test_pairing_skips_siblings_reading_the_same_input_norms_that_mix_units_and_residual_streams():
    paired = consumers(nn.Sequential(Block(), Block()))
    assert paired["0.attn.q_proj.weight"] is None and paired["0.attn.k_proj.weight"] is None  # k, v read the block input
    assert paired["0.attn.v_proj.weight"] == "0.attn.o_proj.weight"
    assert paired["0.attn.o_proj.weight"] is None  # writes the residual stream: the next weight is in another module
    assert paired["0.mlp.0.weight"] == "0.mlp.2.weight"
    assert paired["0.mlp.2.weight"] is None  # a LayerNorm between mixes the units
    assert paired["0.mlp.4.weight"] is None  # the next block's q_proj is no consumer


def test_a_router_reading_the_same_input_as_the_experts_is_no_consumer():
    model = nn.Module()
    model.inp, model.router, model.expert = nn.Linear(4, 16), nn.Linear(16, 4), nn.Linear(16, 16)
    assert consumers(model)["inp.weight"] is None


def test_transposed_conv1d_weights_are_not_surveyed_nor_consumers():
    state = {"h.mlp.c_fc.weight": torch.randn(16, 64), "h.mlp.c_fc.bias": torch.randn(64),  # GPT-2 Conv1D: (in, out)
             "h.mlp.c_proj.weight": torch.randn(64, 16), "h.mlp.c_proj.bias": torch.randn(16)}
    state["h.mlp.c_fc.weight"][:3] = 0.0  # three ignored inputs, not dead units
    r = run_check(DeadUnits(), Weights.from_state_dict(state))
    assert r.status == "pass" and any("transposed" in note for note in r.notes)


def test_pairing_walks_past_batchnorm_in_a_conv_net():
    paired = {u.tensor: (u.consumer, u.running) for u in survey(weights_of(cases.convnet())) if u.kind == "conv"}
    assert paired["0.weight"] == ("3.weight", ["1.running_mean", "1.running_var"])
    assert paired["3.weight"] == ("8.weight", ["4.running_mean", "4.running_var"])  # pooled channels feed the Linear


# --- the case book's numbers -----------------------------------------------------------------------

def test_healthy_trained_layers_stay_far_from_the_thresholds():
    for build in (cases.case_trained_mlp, cases.case_trained_mlp_with_layernorm, cases.case_trained_convnet_with_batchnorm):
        weights = build()
        for units in survey(weights):
            if units.kind != "norm" and units.units > 1:
                rows = weights.cache["stats"][units.tensor].row_norms
                assert rows.min() / rows.median() > 0.2, units.tensor  # against rel_threshold 1e-3, pair_threshold 0.05


def test_relus_killed_by_a_high_lr_and_weight_decay_are_exactly_the_units_flagged():
    model = cases.trained(cases.mlp(), steps=150, lr=3e-2, weight_decay=1.0)
    x, _ = cases.data(model)
    silent = torch.nonzero(torch.relu(model[2](torch.relu(model[0](x)))).amax(0) == 0).flatten().tolist()  # (k,)
    found = {units.tensor: units for units in survey(weights_of(model))}["2.weight"]
    assert found.faded == silent and len(silent) == 9 and not found.zero


# --- reinit-dead-units ------------------------------------------------------------------------------

def patched_model(model: nn.Module, weights: Weights, new: dict) -> nn.Module:
    state = {name: new.get(name, weights.tensor(name)) for name in weights.names()}
    model.load_state_dict(state)
    return model


def revive(model: nn.Module) -> tuple[Weights, dict, Weights]:
    weights = weights_of(model)
    fix = ReinitDeadUnits()
    assert fix.applicable_weights(weights) is None
    new = fix.apply_weights(weights)
    patched = Weights.from_state_dict({name: new.get(name, weights.tensor(name)) for name in weights.names()})
    return weights, new, patched


@pytest.mark.parametrize("case", ["zeroed_hidden_units", "one_zero_row", "zero_layer_never_trained"])
def test_reinit_removes_the_finding_and_keeps_the_function_exactly(case):
    model = {"zeroed_hidden_units": lambda: cases.zero_units(cases.trained(cases.mlp()), 2, list(range(8))),
             "one_zero_row": lambda: cases.zero_units(cases.trained(cases.mlp()), 2, [5]),
             "zero_layer_never_trained": cases.frozen_zero_layer}[case]()
    weights, new, patched = revive(model)
    assert run_check(DeadUnits(), weights).status != "pass"
    after = run_check(DeadUnits(), patched)
    if case == "zero_layer_never_trained":  # every column of the consumer is zeroed, so its rows are 0 until it trains
        assert [f.where for f in after.findings] == [("4.weight",)] and after.fixes == []
    else:
        assert after.status == "pass", after.summary
    assert set(new) == {"2.weight", "2.bias", "4.weight"}
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    before = model(x)
    after = patched_model(model, weights, new)(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_reinit_of_faded_units_keeps_the_function_on_the_data_and_revives_them():
    model = cases.trained(cases.mlp(), steps=150, lr=3e-2, weight_decay=1.0)
    x, _ = cases.data(model)
    before = model(x)
    weights, new, patched = revive(model)
    assert run_check(DeadUnits(), patched).status == "pass"
    after = patched_model(model, weights, new)(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)  # dead ReLUs output 0 on the data
    revived = [0, 12, 13, 14, 17, 20, 22, 25, 27]
    rows = model[2].weight.detach().norm(dim=1)
    assert (rows[revived] / rows.median()).min() > 0.9, "fresh rows at their peers' scale"
    assert torch.relu(model[2](torch.relu(model[0](x))))[:, revived].amax(0).min() > 0, "every revived unit fires again"
    cases.trained(model, steps=20)  # the revived units' outgoing columns learn at once
    assert (model[4].weight.detach()[:, revived].norm(dim=0) / model[4].weight.detach().norm(dim=0).median()).min() > 0.01


def test_reinit_through_batchnorm_changes_the_output_by_a_constant_at_most():
    model = cases.zero_units(cases.trained(cases.convnet()), 3, [0, 1, 2])
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    before = model(x)
    weights, new, patched = revive(model)
    assert run_check(DeadUnits(), patched).status == "pass"
    assert torch.equal(new["4.running_var"][:3], torch.ones(3)) and torch.equal(new["4.running_mean"][:3], torch.zeros(3))
    shift = patched_model(model, weights, new)(x) - before  # (32, 1)
    torch.testing.assert_close(shift, shift[:1].expand_as(shift), rtol=0, atol=1e-5)  # the dead filters' constant σ(β)·w


def test_reinit_resets_zero_norm_scales_to_the_layers_typical_scale():
    model = cases.trained(cases.mlp("layernorm"))
    with torch.no_grad():
        model[1].weight[:6] = 0.0
    weights, new, patched = revive(model)
    assert set(new) == {"1.weight"}
    assert torch.allclose(new["1.weight"][:6], model[1].weight[6:].abs().median().expand(6))
    assert run_check(DeadUnits(), patched).status == "pass"


def test_reinit_is_deterministic_keeps_dtype_never_touches_its_input_and_then_has_nothing_to_do():
    model = cases.zero_units(cases.trained(cases.mlp()), 2, list(range(8))).half()
    weights = weights_of(model)
    original = weights.tensor("4.weight").clone()
    fix = ReinitDeadUnits()
    first, second = fix.apply_weights(weights), fix.apply_weights(weights_of(model))
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert all(first[name].dtype == torch.float16 for name in first)
    assert torch.equal(weights.tensor("4.weight"), original)
    patched = Weights.from_state_dict({name: first.get(name, weights.tensor(name)) for name in weights.names()})
    assert "no dead units" in fix.applicable_weights(patched)


def test_reinit_declines_units_without_a_consumer_and_healthy_weights():
    fix = get_fix("reinit-dead-units")()
    assert "no inferred consumer" in fix.applicable_weights(cases.case_dead_output_row())
    assert "no dead units" in fix.applicable_weights(cases.case_trained_mlp())
    assert fix.kind == "weights" and fix.needs == "weights" and fix.needs_retraining
    lines = fix.doc().splitlines()
    assert lines[2] == fix.facts() and "What it changes" in lines and "Why" in lines
