"""Core contracts: findings and the status order, evidence kinds and dispatch, typed capabilities."""
from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

import modeldoctor
from modeldoctor import Capabilities, Check, Evidence, Finding, InputError, Measurement, Trace, TraceStep, Weights
from modeldoctor.core.results import RANK, STATUSES, derive, exit_code, ordered, reaches, worst_status
from modeldoctor.engine.runner import build_report, run_battery, run_check, select_checks, subject_info


def tiny_subject(**fields):
    torch.manual_seed(0)
    x = torch.rand(32, 2)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    return modeldoctor.regression_subject("tiny", model, (x, x), (x, x), batch_size=16, value_range=(0.0, 1.0), **fields)


# --- findings and the order of statuses -----------------------------------------------------------

def test_statuses_are_ordered_once_and_fail_on_follows_that_order():
    assert STATUSES == ("skip", "pass", "warn", "fail", "error")
    assert worst_status(["pass", "warn", "skip"]) == "warn" and worst_status(["fail", "error"]) == "error"
    assert worst_status([]) == "skip"
    rows = [{"status": "pass"}, {"status": "warn"}]
    assert reaches(rows, "warn") and not reaches(rows, "fail") and not reaches(rows, "never")
    assert reaches([{"status": "error"}], "fail") and not reaches([{"status": "skip"}], "warn")
    assert exit_code({"results": [{"status": "fail"}]}) == 1 and exit_code({"results": [{"status": "warn"}]}) == 0
    assert RANK["error"] > RANK["fail"] > RANK["warn"] > RANK["pass"] > RANK["skip"]


def test_a_result_is_derived_from_its_findings():
    findings = [Finding("warn", "starved", "tower b starved"), Finding("pass", "healthy", "norms fine"),
                Finding("fail", "dead", "tower a dead"), Finding("fail", "dead", "tower c dead")]
    assert [f.message for f in ordered(findings)] == ["tower a dead", "tower c dead", "tower b starved", "norms fine"]
    assert derive(findings) == ("fail", "tower a dead (+2 more)")
    assert derive([Finding("pass", "healthy", "all good")]) == ("pass", "all good")
    with pytest.raises(ValueError, match="status"):
        Finding("error", "x", "a check never reports its own crash")


class TwoFindings(Check):
    """Prescribes per finding: only the failing finding's fixes count, and only those that apply."""

    slug, code = "two-findings", "T10"

    def measure(self, subject, ctx):
        return Measurement(metrics={"a": 1.0}, figures=lambda: [modeldoctor.Figure("bar", "a", {"labels": ["a"], "values": [1.0]})],
                           notes=["measured on a copy"])

    def judge(self, measurement):
        return [Finding("pass", "fine", "part one fine", ("a",), ("dropout",)),
                Finding("fail", "broken", "part two broken", ("a",), ("grad-clip", "random-queries", "no-such-fix"),
                        ("look at part two",))]


def test_runner_derives_status_summary_fixes_and_notes():
    result = run_check(TwoFindings(), tiny_subject())
    assert result.status == "fail" and result.summary == "part two broken"
    # the pass finding's fix is not prescribed; random-queries needs a query space; unknown names are dropped
    assert result.fixes == ["grad-clip"]
    assert result.notes == ["measured on a copy", "look at part two"]
    assert [f.kind for f in result.findings] == ["broken", "fine"]
    assert result.to_dict()["findings"][0] == {"status": "fail", "kind": "broken", "message": "part two broken",
                                              "metrics": ["a"], "fixes": ["grad-clip", "random-queries", "no-such-fix"],
                                              "advice": ["look at part two"], "where": []}


def test_figures_are_built_only_when_asked():
    calls = []

    class Counted(TwoFindings):
        slug = "counted"

        def measure(self, subject, ctx):
            measurement = super().measure(subject, ctx)
            builder = measurement.figures
            measurement.figures = lambda: calls.append(1) or builder()
            return measurement

    assert run_check(Counted(), tiny_subject(), figures=False).figures == [] and calls == []
    assert run_check(Counted(), tiny_subject(), figures=True).figures[0]["kind"] == "bar" and calls == [1]


# --- evidence kinds and dispatch -------------------------------------------------------------------

class LargestWeight(Check):
    """Weights evidence: the largest absolute value over all tensors, read one at a time."""

    slug, code, needs = "largest-weight", "T11", "weights"

    def measure(self, weights, ctx):
        return Measurement(metrics={"max_abs": max(float(t.abs().max()) for _, t in weights.tensors()),
                                    "tensors": len(weights.names())})

    def judge(self, measurement):
        big = measurement.metrics["max_abs"] > 100
        return [Finding("fail" if big else "pass", "scale", f"largest |w| {measurement.metrics['max_abs']:g}", ("max_abs",))]


class LossFalls(Check):
    """Trace evidence: did the recorded loss fall?"""

    slug, code, needs = "loss-falls", "T12", "trace"

    def measure(self, trace, ctx):
        losses = [step.loss for step in trace.steps]
        return Measurement(metrics={"first": losses[0], "last": losses[-1]})

    def judge(self, measurement):
        m = measurement.metrics
        return [Finding("pass" if m["last"] < m["first"] else "warn", "loss", f"loss {m['first']:g} -> {m['last']:g}")]


class RequiresRaises(Check):
    """A broken `requires` must be an error of this check, not of the run."""

    slug, code = "requires-raises", "T13"

    def requires(self, subject):
        raise RuntimeError("requires blew up")


def test_checks_run_on_the_evidence_they_need_and_skip_with_the_reason_otherwise():
    state = {"w": torch.ones(3, 3), "b": torch.full((3,), 500.0)}
    trace = Trace(steps=[TraceStep(step=0, loss=2.0), TraceStep(step=1, loss=1.0)])
    evidence = Evidence(weights=Weights.from_state_dict(state), trace=trace)
    results = run_battery(evidence, [LargestWeight, LossFalls, TwoFindings], budget_s=None)
    by_slug = {r.check: r for r in results}
    assert by_slug["largest-weight"].status == "fail" and by_slug["largest-weight"].metrics["tensors"] == 2
    assert by_slug["loss-falls"].status == "pass" and by_slug["loss-falls"].evidence == "trace"
    assert by_slug["two-findings"].status == "skip" and "live model" in by_slug["two-findings"].summary
    only_subject = run_battery(tiny_subject(), [LargestWeight, LossFalls], budget_s=None)
    assert [r.status for r in only_subject] == ["skip", "skip"]
    assert "weights" in only_subject[0].summary and "recorded training run" in only_subject[1].summary
    assert run_check(LargestWeight(), Weights.from_state_dict(state)).status == "fail"  # a case may return bare weights
    report = build_report(subject_info(None, "w.pt"), results, evidence=evidence.kinds(), figures=False)
    assert report["evidence"] == ["weights", "trace"] and report["subject"]["name"] is None
    assert report["schema"] == "modeldoctor.report/2" and report["status"] == "fail"


def test_a_raising_requires_is_recorded_as_an_error_and_the_battery_goes_on():
    results = run_battery(tiny_subject(), [RequiresRaises, TwoFindings], budget_s=None)
    assert results[0].status == "error" and "requires blew up" in results[0].summary
    assert results[1].status == "fail"


def test_weights_read_one_tensor_at_a_time_and_describe_without_reading():
    weights = Weights.from_state_dict({"a.weight": torch.zeros(4, 3, dtype=torch.float16)})
    info = weights.info("a.weight")
    assert (info.shape, info.dtype, info.numel) == ((4, 3), "float16", 12)
    assert [name for name, _ in weights.tensors()] == ["a.weight"]
    with pytest.raises(ValueError, match="unknown evidence kind"):
        Evidence().get("pictures")


def test_a_loaded_checkpoint_carries_its_weights_as_evidence(tiny_checkpoint):
    loaded = modeldoctor.load_checkpoint(tiny_checkpoint)
    assert loaded.evidence.kinds() == ["subject", "weights"]
    assert set(loaded.weights.names()) == set(loaded.subject.model.state_dict())
    digest = loaded.sha256  # hashed in the background while checks run; reading it waits and fills weights.sha256
    assert digest == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert loaded.weights.sha256 == digest and loaded.weights.format == "modeldoctor"


def test_a_training_checkpoint_keeps_its_optimizer_and_scheduler_state(tmp_path):
    subject = modeldoctor.build_subject("sparse-field", {"n_train_fields": 16, "n_eval_fields": 8})
    optimizer = torch.optim.Adam(subject.model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    path = tmp_path / "train.pt"
    torch.save({"model": subject.model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "epoch": 7}, path)
    loaded = modeldoctor.load_checkpoint(path, subject="sparse-field", config={"n_train_fields": 16, "n_eval_fields": 8})
    assert loaded.format == "wrapper:model"
    assert loaded.weights.optimizer["param_groups"][0]["lr"] == 1e-3
    assert loaded.weights.scheduler["step_size"] == 10 and loaded.weights.extra == {"epoch": 7}


# --- typed capabilities ---------------------------------------------------------------------------

def test_capabilities_are_typed_and_a_mapping_is_converted_strictly():
    subject = tiny_subject(capabilities={"grid_shape": (4, 4)})
    assert isinstance(subject.capabilities, Capabilities) and subject.capabilities.grid_shape == (4, 4)
    with pytest.raises(InputError, match="unknown capability 'grid_shap'.*nearest: 'grid_shape'"):
        tiny_subject(capabilities={"grid_shap": (4, 4)})
    copy = subject.copy()
    copy.capabilities.grid_shape = (2, 8)
    assert subject.capabilities.grid_shape == (4, 4)  # the copy's capabilities are its own


def test_a_group_prefix_that_matches_nothing_is_an_input_error_naming_the_nearest():
    """A prefix with a trailing dot (`"image."`) used to match nothing, and the dead-tower finding vanished."""
    subject = tiny_subject(capabilities=Capabilities(param_groups={"first": ["0."], "second": ["2"]}))
    with pytest.raises(InputError, match=r"param_groups\['first'\]: prefix '0\.' matches no module.*nearest: '0'"):
        run_battery(subject, select_checks(["grad-norms"]))
    tiny_subject(capabilities=Capabilities(param_groups={"first": ["0"], "second": ["2"]})).validate()


@pytest.mark.parametrize(("capabilities", "said"), [
    (Capabilities(embedding_layer="embed"), "embedding_layer: no module 'embed'"),
    (Capabilities(output_module="3"), "output_module: no module '3'"),
    (Capabilities(temperature="logit_scale"), "temperature: no parameter or buffer 'logit_scale'"),
    (Capabilities(routers=[{"gate": "0", "experts": "moe"}]), r"routers\[0\]\.experts: no module 'moe'"),
    (Capabilities(routers=["2"]), r"routers\[0\] \('2'\): declare num_experts or experts"),
    (Capabilities(norm_blocks=["1x"]), "norm_blocks: no module '1x'.*nearest: '1'"),
    (Capabilities(fourier_buffers=["0.wieght"]), "fourier_buffers: no parameter or buffer '0.wieght'.*nearest: '0.weight'"),
])
def test_every_declared_name_is_checked_against_the_model(capabilities, said):
    with pytest.raises(InputError, match=said):
        tiny_subject(capabilities=capabilities).validate()


def test_a_factory_whose_capabilities_name_missing_modules_fails_to_build():
    @modeldoctor.register_subject("test-misnamed-groups")
    def build(config):
        return tiny_subject(capabilities=Capabilities(param_groups={"head": ["heads"]}))

    with pytest.raises(InputError, match="prefix 'heads' matches no module"):
        modeldoctor.build_subject("test-misnamed-groups")


def test_the_battery_runs_in_the_documented_order():
    """`modeldoctor/checks/__init__.py` imports the built-ins in battery order (data-free weight checks, then
    cheap, general subject checks)."""
    builtins = [c.slug for c in select_checks() if c.__module__.startswith("modeldoctor.checks.")]
    assert builtins == ["non-finite", "dead-units", "untrained-layers", "optimizer-state", "weight-collapse",
                        "spectral-shape", "overfit-batch", "grad-norms", "lr-range", "loss-masking", "mean-collapse", "query-coverage",
                        "codec-roundtrip", "expert-balance", "attention", "retrieval"]
