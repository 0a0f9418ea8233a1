"""The library face: modeldoctor.diagnose / bench / demo, the functions the command line is a thin layer over."""
import inspect

import pytest
import torch
from torch import nn

import modeldoctor
from modeldoctor import Evidence, Recipe, regression_subject
from modeldoctor.engine.runner import run_battery, select_checks

CHECKS = ["mean-collapse", "query-coverage"]


def tiny_subject():
    torch.manual_seed(0)
    x = torch.rand(64, 1)
    return regression_subject("tiny", nn.Linear(1, 1), (x, x), (x, x), batch_size=16, value_range=(0.0, 1.0),
                              recipe=Recipe(lr=1e-2, steps=50))


def test_diagnose_a_subject_gives_the_statuses_of_run_battery():
    subject = tiny_subject()
    expected = [(r.check, r.status) for r in run_battery(subject, select_checks(CHECKS), figures=False)]
    report = modeldoctor.diagnose(subject, checks=CHECKS)
    assert report["schema"] == "modeldoctor.report/2" and report["evidence"] == ["subject"]
    assert [(r["check"], r["status"]) for r in report["results"]] == expected
    assert report["subject"]["name"] == "tiny" and report["subject"]["checkpoint"] is None
    # An Evidence bundle and a comma-separated string of names give the same.
    again = modeldoctor.diagnose(Evidence(subject=subject), checks="mean-collapse,query-coverage")
    assert [(r["check"], r["status"]) for r in again["results"]] == expected


def test_figures_are_built_only_when_asked_for():
    subject = tiny_subject()
    without = modeldoctor.diagnose(subject, checks=["mean-collapse"])
    assert without["figures"] is False and all(r["figures"] == [] for r in without["results"])
    drawn = modeldoctor.diagnose(subject, checks=["mean-collapse"], figures=True)
    assert drawn["figures"] is True and any(r["figures"] for r in drawn["results"])
    assert [r["status"] for r in drawn["results"]] == [r["status"] for r in without["results"]]


def test_diagnose_a_checkpoint_path(tiny_checkpoint):
    report = modeldoctor.diagnose(tiny_checkpoint, checks=["query-coverage"], config={"n_eval_fields": 8})
    assert report["evidence"] == ["subject", "weights"]
    assert report["subject"]["checkpoint"] == str(tiny_checkpoint) and len(report["subject"]["sha256"]) == 64
    assert report["subject"]["config"]["n_eval_fields"] == 8
    assert [r["check"] for r in report["results"]] == ["query-coverage"]
    assert report["results"][0]["status"] in ("pass", "warn", "fail")


def test_bad_input_is_an_input_error(tmp_path):
    with pytest.raises(modeldoctor.InputError, match="checkpoint not found"):
        modeldoctor.diagnose(tmp_path / "nosuch.pt")
    with pytest.raises(modeldoctor.InputError, match="unknown check"):
        modeldoctor.diagnose(tiny_subject(), checks=["nosuch-check"])
    with pytest.raises(ValueError, match="checkpoint path"):
        modeldoctor.diagnose(tiny_subject(), subject="sparse-field")


def test_bench_and_demo_are_exported_functions():
    for name in ("diagnose", "bench", "demo"):
        assert name in modeldoctor.__all__
        function = getattr(modeldoctor, name)
        assert inspect.isfunction(function), f"modeldoctor.{name} is {function!r}"
    assert list(inspect.signature(modeldoctor.bench).parameters)[:2] == ["target", "fixes"]
    assert {"seeds", "steps", "jobs", "on_stage", "progress"} <= set(inspect.signature(modeldoctor.demo).parameters)


def test_bench_rejects_unknown_and_missing_fixes(tiny_checkpoint):
    with pytest.raises(modeldoctor.InputError, match="unknown fix"):
        modeldoctor.bench(tiny_checkpoint, ["nosuch-fix"])
    with pytest.raises(modeldoctor.InputError, match="at least one fix"):
        modeldoctor.bench(tiny_checkpoint, [])
