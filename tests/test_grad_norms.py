"""grad-norms beyond the case book: where NaNs come from, dead and grouped parameters, hooks, options."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from modeldoctor import CheckContext, Recipe, regression_subject, run_check, train
from modeldoctor.checks.grad_norms import GradNorms
from modeldoctor.engine.casebook import load_cases
from modeldoctor.engine.runner import build_report
from modeldoctor.probes.gradtrace import GradTracer, locate_nonfinite
from modeldoctor.report import render_html

CASES, _ = load_cases(Path(__file__).resolve().parents[1] / "checks" / "grad-norms")


def run(case: str, **options):
    return run_check(GradNorms(**options), CASES[case](), seed=0)


def no_hooks_left(model: nn.Module) -> bool:
    for module in model.modules():
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            if getattr(module, name):
                return False
    return all(not p._backward_hooks for p in model.parameters())


def test_nan_names_the_module_that_produces_it():
    result = run("nan_from_log_of_negative")
    assert result.status == "fail"
    assert result.metrics["nonfinite_module"] == "features"
    assert result.metrics["nonfinite_stage"] == "forward" and result.metrics["nonfinite_step"] == 0
    assert "`features`" in result.summary


class SqrtNorm(nn.Module):
    """Finite forward, infinite backward: d sqrt(x)/dx at x = 0."""

    def forward(self, x):  # (B, D) -> (B, 1)
        return torch.sqrt((x * 0).sum(-1, keepdim=True))


def test_backward_nonfinite_is_located_in_backward_order():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), SqrtNorm(), nn.Linear(1, 1))
    x, y = torch.rand(8, 4), torch.rand(8, 1)
    where = locate_nonfinite(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), (x, y))
    assert where["stage"] == "backward" and where["module"] == "1", where
    assert no_hooks_left(model) and all(p.grad is None for p in model.parameters())


def test_nonfinite_loss_with_finite_outputs_blames_the_loss():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    where = locate_nonfinite(model, lambda m, b: torch.log(-(m(b) ** 2).mean() - 1), torch.rand(8, 4))
    assert where["stage"] == "loss" and "loss function itself" in where["detail"]


def test_dead_parameters_are_listed_by_name():
    result = run("dead_tower_detached")
    assert result.status == "fail"
    m = result.metrics
    assert set(m["dead_params"]) == {"tower_b.0.weight", "tower_b.0.bias", "tower_b.2.weight", "tower_b.2.bias"}
    assert m["dead_modules"] == ["tower_b.0", "tower_b.2"] and m["never_in_graph"] == 4
    assert "tower_b.0" in result.summary


def test_per_group_norms_when_groups_are_declared():
    m = run("healthy_towers_with_groups").metrics
    assert set(m["group_grad_norms"]) == {"image", "text", "fusion"}
    assert all(v > 0 for v in m["group_grad_norms"].values())
    assert set(m["group_update_ratios"]) == {"image", "text", "fusion"}
    assert "group_grad_norms" not in run("healthy_mlp").metrics


def test_frozen_group_is_named():
    result = run("frozen_text_group")
    assert result.metrics["frozen_groups"] == ["text"] and "'text'" in result.summary


@pytest.mark.parametrize("case", ["nan_from_log_of_negative", "healthy_towers_with_groups"])
def test_tracer_leaves_no_hooks_behind(case):
    subject = CASES[case]()
    GradNorms().measure(subject, CheckContext())  # on the subject itself, not a copy
    assert no_hooks_left(subject.model)
    assert not torch.nn.modules.module._global_forward_hooks


def test_thresholds_are_options():
    assert run("exploding_deep_mlp").status == "fail"
    assert run("exploding_deep_mlp", max_global_norm=1e12).status != "fail"
    assert run("healthy_mlp", update_ratio_warn_above=1e-3).status == "warn"
    with pytest.raises(ValueError):
        GradNorms(no_such_option=1)


def test_update_ratio_is_the_actual_weight_change():
    """One SGD step: Δw = lr·g (momentum buffer starts at g), so ‖Δw‖/‖w‖ = lr·‖g‖/‖w‖."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.rand(16, 3), torch.rand(16, 2)
    subject = regression_subject("one", model, (x, y), (x, y), batch_size=16, recipe=Recipe(optimizer="sgd", lr=0.1))
    w_before = model.weight.detach().clone()
    tracer = GradTracer(model)
    train(subject, 1, monitor=tracer)
    trace = tracer.result()
    expected = float((model.weight.detach() - w_before).norm() / w_before.norm())
    assert trace.weight_names == ["weight"]
    assert math.isclose(trace.update_ratios()[0, 0], expected, rel_tol=1e-5)
    assert math.isclose(trace.update_ratios()[0, 0], 0.1 * trace.norms[0, 0] / float(w_before.norm()), rel_tol=1e-4)


def test_skips_without_trainable_parameters():
    subject = CASES["healthy_mlp"]()
    subject.model.requires_grad_(False)
    assert run_check(GradNorms(), subject).status == "skip"


def test_figures_render_in_the_report():
    result = run("dead_tower_detached")
    assert [f["kind"] for f in result.figures] == ["heatmap", "line", "table"]
    heatmap, _, table = result.figures
    assert heatmap["yticklabels"][:2] == ["tower_a.0", "tower_a.2"] and len(heatmap["matrix"][0]) == 30
    assert table["rows"][0][0] == "head"  # ranked by median gradient norm
    page = render_html(build_report({"name": "case"}, [result]))
    assert "<th>median grad norm</th>" in page and "<td>tower_b.0</td>" in page


def test_starved_group_is_named():
    """A declared group whose parameters are trainable but never reached by backward."""
    subject = CASES["healthy_towers_with_groups"]()
    subject.model.detach_b = True
    result = run_check(GradNorms(), subject, seed=0)
    assert result.status == "fail" and result.metrics["dead_groups"] == ["text"]
    assert result.summary.startswith("declared group 'text' gets no gradient")
    assert result.fixes == []  # clipping or warmup cannot wire up a detached tower
