"""optimizer-state: mapping optimizer params to tensor names (sure, inferred, ambiguous), the judge's edges, the cases."""
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from modeldoctor import Weights, run_check
from modeldoctor.checks.optimizer_state import NO_OPTIMIZER, OptimizerState, static_schedule
from modeldoctor.core.results import Measurement, derive
from modeldoctor.probes import optimizer_map as om

CASES = Path(__file__).resolve().parents[1] / "checks" / "optimizer-state" / "cases.py"
spec = importlib.util.spec_from_file_location("optimizer_state_cases", CASES)
cases = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cases)


def stepped(model, optimizer, steps=3, x=None):
    x = torch.randn(8, model[0].in_features) if x is None else x
    for _ in range(steps):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    return Weights.from_state_dict(model.state_dict(), optimizer=optimizer.state_dict())


def result(weights, **options):
    return run_check(OptimizerState(**options), weights)


# --- the alignment kernels, by hand ------------------------------------------------------------

def test_embed_gives_leftmost_and_rightmost_positions():
    a, b = (4, 4), (4,)
    shapes = [a, b, a, b, a, b]
    assert om.embed([a, b], shapes) == ([0, 1], [4, 5])
    assert om.embed([None, b], shapes) == ([0, 1], [4, 5])
    assert om.embed([(2, 2)], shapes) is None
    assert om.embed([a, b, a, b, a, b, a], shapes) is None
    left, right = om.embed([a, b], shapes)
    assert om.feasible([a, b], shapes, left, right) == [[0, 2, 4], [1, 3, 5]]
    assert om.embed([(1, 4)], [a, b, (1, 4)]) == ([2], [2])  # a unique shape is certain


def test_merge_interleaves_weight_decay_groups():
    w, v = (4, 4), (4,)
    shapes = [w, v, v, w, v]  # linear, norm(weight, bias) ... as named_parameters lists them
    assert om.merge([[w, w], [v, v, v]], shapes) == [[0, 3], [1, 2, 4]]
    assert om.merge([[w, w], [v, v, v]], shapes, backward=True) == [[0, 3], [1, 2, 4]]
    assert om.merge([[w, w, w], [v]], shapes) is None
    assert om.merge([[w], [v]], shapes) == [[0], [1]] and om.merge([[w], [v]], shapes, backward=True) == [[3], [4]]
    # a greedy merge from the end would give the last (4,) to group 0 and fail; the search backtracks
    assert om.merge([[v, w, v], [v, v]], [v, w, v, v, v, (9,)], backward=True) is not None
    assert om.merge([[v] * 3, [v] * 3], [v] * 6, budget=3) is None


def test_resolve_names_exact_prefixed_and_ambiguous():
    table = {"model.0.weight": (4, 3), "model.0.bias": (4,), "model.2.weight": (1, 4), "model.2.bias": (1,)}
    assert om.resolve_names(["model.0.weight"], [(4, 3)], table) == ["model.0.weight"]
    assert om.resolve_names(["0.weight", "0.bias"], [None, None], table) == ["model.0.weight", "model.0.bias"]
    assert om.resolve_names(["weight", "bias"], [(1, 4), (1,)], table) == ["model.2.weight", "model.2.bias"]
    assert om.resolve_names(["weight", "bias"], [None, None], table) is None  # 0. or 2.: ambiguous
    assert om.resolve_names(["nope"], [None], table) is None


# --- the mapping: sure, inferred, ambiguous ----------------------------------------------------

def test_param_names_give_a_sure_mapping_on_this_torch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    weights = stepped(model, torch.optim.Adam(model.named_parameters()))
    assert weights.optimizer["param_groups"][0]["param_names"] == [n for n, _ in model.named_parameters()]
    pmap = om.optimizer_map(weights)
    assert pmap.how == "param_names" and pmap.sure and pmap.uncovered == []
    assert [pmap.name(i) for i in range(6)] == [n for n, _ in model.named_parameters()]


def test_param_names_of_a_submodule_resolve_under_its_prefix():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    weights = stepped(model, torch.optim.Adam(model[2].named_parameters()))  # names "weight", "bias"
    pmap = om.optimizer_map(weights)
    assert pmap.how == "param_names" and [pmap.name(0), pmap.name(1)] == ["2.weight", "2.bias"]
    assert pmap.uncovered == ["0.weight", "0.bias"]


def test_masks_registered_as_buffers_are_not_candidates():
    assert om.is_buffer("h.0.attn.bias", (1, 1, 8, 8)) and om.is_buffer("h.0.attn.causal_mask", (8, 8))
    assert not om.is_buffer("h.0.attn.c_attn.bias", (96,)) and not om.is_buffer("attn.bias_k", (1, 1, 32))


def test_buffers_are_not_candidates_and_the_mapping_is_the_identity():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    weights = stepped(model, torch.optim.Adam(model.parameters()))
    assert [n for n, _ in om.candidate_tensors(weights)] == [n for n, _ in model.named_parameters()]
    pmap = om.optimizer_map(weights)
    assert pmap.how == "identity" and pmap.sure and pmap.missing == 0


def test_optimizer_over_the_last_of_three_identical_layers_is_ambiguous():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    weights = stepped(model, torch.optim.Adam(model[2].parameters()))
    pmap = om.optimizer_map(weights)
    assert pmap.how == "order" and not pmap.sure and pmap.missing == 4
    assert pmap.options[0] == ["0.weight", "1.weight", "2.weight"] and pmap.uncovered == []
    assert len(pmap.maybe_uncovered) == 6
    r = result(weights)
    assert r.status == "fail" and "cannot be told" in r.summary and r.metrics["ambiguous_params"] == 2
    assert set(r.findings[0].where) == {n for n, _ in model.named_parameters()}


def test_groups_out_of_model_order_map_by_permutation():
    a, b, c = (4, 3), (4,), (1, 4)
    pmap = om.map_params([[c, (1,)], [a, b]], [("0.weight", a), ("0.bias", b), ("2.weight", c), ("2.bias", (1,))])
    assert pmap.how == "group-permutation" and pmap.sure
    assert [pmap.name(i) for i in range(4)] == ["2.weight", "2.bias", "0.weight", "0.bias"]


def test_params_without_state_match_any_shape_and_count_equality_makes_it_certain():
    cands = [("a", (4, 3)), ("b", (4,)), ("c", (1, 4))]
    pmap = om.map_params([[None, None, None]], cands)
    assert pmap.how == "identity" and [pmap.name(i) for i in range(3)] == ["a", "b", "c"]
    pmap = om.map_params([[None]], cands)
    assert pmap.options == [["a", "b", "c"]] and pmap.missing == 2


def test_orphans_and_unalignable_optimizers():
    cands = [("emb.weight", (12, 8)), ("out.weight", (1, 8))]
    pmap = om.map_params([[(10, 8), (1, 8)]], cands)  # the old table: a shape the checkpoint no longer has
    assert pmap.orphans == [0] and pmap.options[1] == ["out.weight"] and pmap.uncovered == ["emb.weight"]
    pmap = om.map_params([[None, None, None]], cands)
    assert pmap.how == "none" and "do not align" in pmap.note
    pmap = om.map_params([[(96,), (8,)]], cands)  # flattened (FSDP-style) state: nothing to align, no verdict
    assert pmap.how == "none" and pmap.missing is None and "flattened" in pmap.note


def test_params_frozen_with_requires_grad_inside_the_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    optimizer = torch.optim.Adam(model.parameters())
    model[0].requires_grad_(False)
    weights = stepped(model, optimizer)
    r = result(weights)
    assert r.status == "fail" and r.findings[0].where == ("0.weight", "0.bias") and "frozen" in r.findings[0].advice[0]
    assert result(weights, frozen="0.").status == "pass"


def test_tied_weights_are_not_reported_uncovered():
    torch.manual_seed(0)
    emb, head = nn.Embedding(10, 6), nn.Linear(6, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    optimizer = torch.optim.Adam(model.parameters())
    for _ in range(3):
        optimizer.zero_grad()
        model["head"](model["emb"](torch.arange(10))).square().mean().backward()
        optimizer.step()
    weights = Weights.from_state_dict(model.state_dict(), optimizer=optimizer.state_dict())
    assert list(weights.names()) == ["emb.weight", "head.weight"]
    r = result(weights)
    assert r.status == "pass" and r.metrics["tied"] == ["head.weight = emb.weight"]


def test_optimizer_kind_from_group_keys():
    p = [nn.Parameter(torch.zeros(2))]
    kinds = {torch.optim.Adam: "Adam", torch.optim.AdamW: "AdamW", torch.optim.SGD: "SGD", torch.optim.RMSprop: "RMSprop",
             torch.optim.Adagrad: "Adagrad", torch.optim.RAdam: "Adam-family", torch.optim.NAdam: "NAdam"}
    for cls, kind in kinds.items():
        assert om.optimizer_kind(cls(p, lr=0.1).state_dict()) == kind, cls


# --- the judge's edges -------------------------------------------------------------------------

def test_skips_without_optimizer_state_and_rejects_unknown_options():
    r = run_check(OptimizerState(), Weights.from_state_dict({"w": torch.zeros(2)}))
    assert r.status == "skip" and NO_OPTIMIZER in r.summary
    with pytest.raises(ValueError):
        OptimizerState(lag=0.1)


def test_an_optimizer_that_never_stepped_fails():
    model = nn.Sequential(nn.Linear(3, 2))
    weights = Weights.from_state_dict(model.state_dict(), optimizer=torch.optim.Adam(model.parameters()).state_dict())
    r = result(weights)
    assert r.status == "fail" and "never took a step" in r.summary


def test_adagrad_state_at_step_zero_counts_as_no_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    optimizer = torch.optim.Adagrad(model.parameters())
    weights = stepped(nn.Sequential(model[0]), optimizer)  # model[1] is never used: its state stays at step 0
    weights = Weights.from_state_dict(model.state_dict(), optimizer=weights.optimizer)
    r = result(weights)
    assert r.status == "fail" and r.findings[0].kind == "no-state" and set(r.findings[0].where) == {"1.weight", "1.bias"}


def test_frozen_prefixes_and_buffer_like_leaves():
    weights = cases.case_optimizer_over_head_only()
    assert result(weights, frozen=("body.",)).status == "pass"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4))
    model.register_buffer("pe", torch.randn(5, 4))  # a float buffer under a leaf the probe does not know
    r = result(stepped(model, torch.optim.Adam(model.parameters())))
    assert r.status == "warn" and r.findings[0].where == ("pe",) and "maybe buffers" in r.summary


def test_string_state_keys_are_read():
    weights = cases.case_param_never_used_in_forward()
    opt = weights.optimizer
    weights.optimizer = {"state": {str(k): v for k, v in opt["state"].items()}, "param_groups": opt["param_groups"]}
    assert result(weights).findings[0].kind == "no-state"


def test_zero_lr_with_a_schedule_that_started_at_zero_fails_and_a_decay_passes():
    weights = cases.case_cosine_schedule_finished_at_zero()
    assert result(weights).status == "pass"
    weights.optimizer["param_groups"][0]["initial_lr"] = 0.0
    r = result(weights)
    assert r.status == "fail" and "initial_lr 0" in r.summary and r.findings[0].kind == "lr-zero"


def test_scheduler_that_was_never_stepped_warns():
    weights = cases.case_steplr_never_moved()
    weights.scheduler = {**weights.scheduler, "last_epoch": 0}
    r = result(weights)
    assert r.status == "warn" and "never stepped" in r.summary
    assert result(weights, min_steps=100).status == "pass"


def test_static_schedule_knows_warmups_and_plateaus():
    def state(cls, steps, *args, **kwargs):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = cls(optimizer, *args, **kwargs)
        for _ in range(steps):
            optimizer.step()
            scheduler.step(*([1.0] if cls is torch.optim.lr_scheduler.ReduceLROnPlateau else []))
        return scheduler.state_dict()

    sch = torch.optim.lr_scheduler
    assert static_schedule(state(sch.StepLR, 20, step_size=100))
    assert static_schedule(state(sch.LambdaLR, 20, lambda e: 1.0))
    assert not static_schedule(state(sch.StepLR, 20, step_size=5))
    assert not static_schedule(state(sch.LinearLR, 20, start_factor=0.1, total_iters=5))  # warmed up, now at base
    assert not static_schedule(state(sch.ReduceLROnPlateau, 20))
    assert not static_schedule(state(sch.CosineAnnealingWarmRestarts, 20, T_0=10))


def test_step_lag_is_judged_only_after_min_steps():
    weights = cases.case_rarely_taken_branch()
    assert result(weights).status == "warn"
    assert result(weights, min_steps=1000).status == "pass"
    assert result(weights, lag_fraction=0.2).status == "pass"


def test_judge_passes_on_a_clean_measurement():
    m = {"optimizer": "Adam", "param_groups": 1, "params": 2, "params_with_state": 2, "stateless_by_design": 0,
         "tensors": 2, "covered": 2, "frozen": 0, "uncovered_count": 0, "mapping": "identity", "mapping_sure": False,
         "orphans": [], "no_state_count": 0, "zero_moment_count": 0, "lagging_count": 0, "max_step": 30,
         "lrs": [1e-3], "zero_lr_groups": [], "scheduler": None, "trained": ["a", "b"]}
    status, summary = derive(OptimizerState().judge(Measurement(metrics=m)))
    assert status == "pass" and "mapping inferred: identity" in summary


# --- the cases: what each finding names ------------------------------------------------------------

@pytest.mark.parametrize(("case", "kind", "where", "mapping"), [
    ("optimizer_over_head_only", "uncovered",
     ["body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias", "body.3.weight", "body.3.bias"], "order"),
    ("param_never_used_in_forward", "no-state", ["aux.weight", "aux.bias"], "identity"),
    ("param_with_only_zero_gradients", "zero-gradient", ["gate"], "identity"),
    ("rarely_taken_branch", "step-lag", ["gate"], "identity"),
    ("group_with_lr_zero_from_start", "lr-zero",
     ["body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias", "body.3.weight", "body.3.bias"], "identity"),
    ("steplr_never_moved", "static-schedule", None, "identity"),
    ("embedding_resized_after_optimizer", "uncovered", ["0.weight"], "order"),
])
def test_each_faulty_case_names_its_tensors(case, kind, where, mapping):
    r = result(getattr(cases, f"case_{case}")())
    first = r.findings[0]
    assert first.kind == kind and r.metrics["mapping"] == mapping
    assert where is None or list(first.where) == where
    assert first.advice


@pytest.mark.parametrize(("case", "mapping", "advice"), [
    ("healthy_adam", "identity", None), ("healthy_sgd_momentum", "identity", None),
    ("sgd_without_momentum", "identity", "keeps no state"),
    ("cosine_schedule_finished_at_zero", "identity", "finished schedule"),
    ("named_parameters_with_weight_decay_split", "param_names", None),
    ("weight_decay_split_without_names", "interleaved", None),
    ("two_groups_in_non_model_order", "group-permutation", None),
])
def test_each_healthy_case_passes_with_its_mapping(case, mapping, advice):
    r = result(getattr(cases, f"case_{case}")())
    assert r.status == "pass" and r.metrics["mapping"] == mapping and r.metrics["uncovered_count"] == 0
    assert advice is None or any(advice in line for line in r.findings[0].advice)
    assert r.metrics["mapping_sure"] == (mapping == "param_names")
