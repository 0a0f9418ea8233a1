"""lr-range: the LR range test finds divergence, suggests an LR inside the usable range, works on a copy."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from modeldoctor import Measurement, Recipe, regression_subject
from modeldoctor.checks.lr_range import LRRange, ema_smooth, factor
from modeldoctor.core.registry import load_plugins
from modeldoctor.core.results import derive
from modeldoctor.engine.casebook import load_cases
from modeldoctor.engine.runner import run_check
from modeldoctor.report import figure_svg

load_plugins()  # registers the fixes that the check prescribes

CASES, _ = load_cases(Path(__file__).resolve().parents[1] / "checks" / "lr-range")


def test_ema_smooth_is_bias_corrected():
    assert ema_smooth([2.0, 2.0, 2.0], 0.98) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0
    # by hand: a1 = 0.5*1 = 0.5 -> 0.5/0.5 = 1; a2 = 0.25 + 0.5*3 = 1.75 -> 1.75/0.75
    assert ema_smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, 1.75 / 0.75])


def test_far_too_high_lr_finds_divergence_and_suggests_an_lr_below_it():
    check = LRRange()
    result = run_check(check, CASES["adam_lr_far_too_high"](), seed=0)
    m = result.metrics
    assert result.status == "fail", result.summary
    assert m["divergence_lr"] is not None and m["divergence_lr"] < m["recipe_lr"]
    assert check.options["min_lr"] <= m["suggested_lr"] < m["divergence_lr"]
    assert m["usable_low_lr"] <= m["suggested_lr"] <= m["usable_high_lr"] <= m["divergence_lr"] / 3
    assert m["steps_run"] < check.options["steps"], "the run stops early once the loss diverges"
    assert "decrease" in result.summary and "lower" in result.summary
    assert result.fixes == ["warmup-cosine"], "no clipping for Adam: its step does not scale with the gradient"


def test_sgd_too_high_also_prescribes_clipping_and_too_low_says_increase():
    assert run_check(LRRange(), CASES["sgd_lr_far_too_high"](), seed=0).fixes == ["warmup-cosine", "grad-clip"]
    low = run_check(LRRange(), CASES["lr_far_too_low"](), seed=0)
    assert low.status == "warn" and "increase" in low.summary and "higher" in low.summary
    assert low.fixes == []
    assert low.metrics["sweep_min_lr"] < low.metrics["recipe_lr"], "the sweep widens to cover the recipe LR"


def test_runs_on_a_copy_and_leaves_the_model_untouched():
    subject = CASES["sgd_lr_far_too_high"]()
    before = {k: v.clone() for k, v in subject.model.state_dict().items()}
    run_check(LRRange(), subject, seed=0)
    after = subject.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert subject.recipe.lr == 3.0


def test_figure_marks_the_recipe_and_suggested_lr_on_a_log_x_axis():
    result = run_check(LRRange(), CASES["sensible_lr"](), seed=0)
    figure = result.figures[0]
    assert figure["kind"] == "line" and figure["logx"] is True
    labels = [line["label"] for line in figure["vlines"]]
    assert any(label.startswith("recipe LR") for label in labels)
    assert any(label.startswith("suggested") for label in labels)
    svg = figure_svg(figure)
    assert svg.startswith("<svg") and "cannot be drawn" not in svg


def evidence(lr, divergence=0.3, steepest=1e-3):
    m = {"recipe_lr": lr, "recipe_optimizer": "adam", "initial_loss": 1.0, "steps_run": 90,
         "divergence_lr": divergence, "steepest_lr": steepest, "lr_at_min_loss": 0.1, "suggested_lr": steepest}
    return Measurement(metrics=m)


@pytest.mark.parametrize(("lr", "status"), [(0.5, "fail"), (0.3, "fail"), (0.2, "warn"), (0.05, "pass"),
                                            (1e-4, "pass"), (1e-5, "warn")])
def test_judge_thresholds(lr, status):
    assert derive(LRRange().judge(evidence(lr)))[0] == status


def test_thresholds_are_options_and_missing_points_are_handled():
    assert derive(LRRange(high_margin=10.0).judge(evidence(0.05)))[0] == "warn"
    assert derive(LRRange(low_margin=5.0).judge(evidence(1e-4)))[0] == "warn"
    assert derive(LRRange().judge(evidence(5.0, divergence=None, steepest=None)))[0] == "pass"
    nan_start = evidence(1e-3)
    nan_start.metrics["initial_loss"] = math.nan
    assert derive(LRRange().judge(nan_start))[0] == "fail"
    assert factor(3.0, 1e-3) == "3000× lower" and factor(1e-3, 3e-3) == "3× higher"


def test_skips_a_model_without_trainable_parameters():
    torch.manual_seed(0)
    model = nn.Linear(1, 1).requires_grad_(False)
    data = (torch.rand(8, 1), torch.rand(8, 1))
    subject = regression_subject("frozen", model, data, data, recipe=Recipe(lr=1e-3))
    result = run_check(LRRange(), subject)
    assert result.status == "skip" and "trainable" in result.summary


@pytest.mark.parametrize("vlines", [[{"x": None, "label": "missing"}], [{"x": -1.0, "label": "negative"}],
                                    [{"x": 1e-3}], None])
def test_log_x_figures_with_awkward_marks_still_draw(vlines):
    figure = {"kind": "line", "series": [{"name": "loss", "x": [0.0, 1e-4, 1e-3, None], "y": [1.0, 0.5, None, 0.2]}],
              "logx": True, "logy": True, "vlines": vlines}
    svg = figure_svg(figure)
    assert svg.startswith("<svg") and "cannot be drawn" not in svg
