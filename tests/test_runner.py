"""The runner: crash barrier, time budget, copies, skips, applicable fixes only, report schema."""
import json
import time

import torch
from torch import nn

from modeldoctor import Check, Finding, Measurement, Recipe, regression_subject
from modeldoctor.core.results import reaches
from modeldoctor.engine.runner import build_report, run_battery, select_checks, subject_info


def tiny_subject(**fields):
    torch.manual_seed(0)
    x = torch.rand(64, 1)
    return regression_subject("tiny", nn.Linear(1, 1), (x, x), (x, x), batch_size=16, value_range=(0.0, 1.0),
                              recipe=Recipe(lr=1e-2, steps=50), **fields)


class Crashes(Check):
    """Always raises."""

    slug, code = "crashes", "T1"

    def measure(self, subject, ctx):
        raise RuntimeError("boom")


class Mutates(Check):
    """Scribbles on the model it is given."""

    slug, code = "mutates", "T2"

    def measure(self, subject, ctx):
        with torch.no_grad():
            for parameter in subject.model.parameters():
                parameter.add_(100.0)
        return Measurement(metrics={"ok": 1})

    def judge(self, measurement):
        return [Finding("pass", "ok", "scribbled")]


class Slow(Check):
    """Trains far longer than its budget allows."""

    slug, code = "slow", "T3"

    def measure(self, subject, ctx):
        from modeldoctor.probes.training import train

        train(subject, 10**7, deadline=ctx.deadline)


def test_a_crashing_check_is_an_error_and_the_rest_still_run():
    subject = tiny_subject()
    results = run_battery(subject, [Crashes, *select_checks(["mean-collapse"])], budget_s=None)
    assert [r.status for r in results][0] == "error"
    assert "boom" in results[0].summary and "RuntimeError" in results[0].error
    assert results[1].check == "mean-collapse" and results[1].status in ("pass", "warn", "fail")


def test_checks_get_copies_and_never_change_the_model_the_next_check_sees():
    subject = tiny_subject()
    before = {k: v.clone() for k, v in subject.model.state_dict().items()}
    run_battery(subject, [Mutates, *select_checks(["overfit-batch"])], budget_s=None)
    after = subject.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_time_budget_turns_a_runaway_check_into_an_error_quickly():
    start = time.monotonic()
    result = run_battery(tiny_subject(), [Slow], budget_s=1.0)[0]
    assert result.status == "error" and "time budget" in result.summary
    assert time.monotonic() - start < 10


def test_missing_capability_is_a_skip_with_a_reason():
    result = run_battery(tiny_subject(), select_checks(["query-coverage"]))[0]
    assert result.status == "skip" and "query" in result.summary


def test_only_applicable_fixes_are_prescribed():
    # mean-collapse prescribes random-queries, clamp-output, learnable-fourier; a plain MLP without
    # queries or Fourier buffers can only take clamp-output.
    subject = tiny_subject()
    subject.model = nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 1))
    with torch.no_grad():
        subject.model[1].weight.zero_()  # constant output: mean-collapse fails
    result = run_battery(subject, select_checks(["mean-collapse"]))[0]
    assert result.status == "fail"
    assert result.fixes == ["clamp-output"]


def test_report_is_json_with_the_documented_schema():
    subject = tiny_subject(queries=None)
    results = run_battery(subject, select_checks(["mean-collapse", "query-coverage"]))
    report = build_report(subject_info(subject, "x.pt", "abc"), results)
    data = json.loads(json.dumps(report, allow_nan=False))
    assert data["schema"] == "modeldoctor.report/2" and data["evidence"] == ["subject"]
    assert {"name", "checkpoint", "sha256"} <= set(data["subject"])
    for row in data["results"]:
        assert {"check", "code", "evidence", "status", "summary", "findings", "metrics", "fixes", "duration_s"} <= set(row)
        assert row["status"] in ("pass", "warn", "fail", "skip", "error")


def test_fail_on_levels():
    rows = [{"status": "pass"}, {"status": "warn"}]
    assert reaches(rows, "warn") and not reaches(rows, "fail") and not reaches(rows, "never")
    assert reaches([{"status": "error"}], "fail")
