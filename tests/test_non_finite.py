"""non-finite: NaN/Inf counted per tensor (complex and half precision included), masks and integers left alone."""
import pytest
import torch

from modeldoctor import Weights, run_check
from modeldoctor.checks.non_finite import NonFinite
from modeldoctor.core.evidence import InMemoryTensors
from modeldoctor.core.results import Measurement, derive


def result(state: dict, **options):
    return run_check(NonFinite(**options), Weights.from_state_dict(state))


def base() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(16, 8, generator=g), "fc.bias": torch.randn(16, generator=g)}


def metrics(**overrides) -> dict:
    return {"tensors_checked": 4, "nonfinite_tensors": 0, "nonfinite_values": 0, "nonfinite_share": 0.0, "worst": [],
            "affected": [], "fully_nonfinite": 0, "masks": [], **overrides}


def test_judge_passes_on_finite_and_fails_on_one_value_naming_every_affected_tensor():
    check = NonFinite()
    assert derive(check.judge(Measurement(metrics=metrics())))[0] == "pass"
    worst = [{"name": "a.weight", "nan": 1, "inf": 0, "share": 1e-9}, {"name": "b.bias", "nan": 0, "inf": 1, "share": 1e-9}]
    findings = check.judge(Measurement(metrics=metrics(nonfinite_tensors=2, nonfinite_values=2, nonfinite_share=1e-9,
                                                       worst=worst, affected=["a.weight", "b.bias"])))
    assert derive(findings)[0] == "fail"
    assert findings[0].where == ("a.weight", "b.bias")
    assert findings[0].fixes == () and any("restore" in line for line in findings[0].advice)


def test_counts_nan_and_inf_with_their_share():
    state = base()
    state["fc.weight"][0, :4] = float("nan")
    state["fc.weight"][1, 0] = float("-inf")
    state["fc.bias"][:] = float("inf")
    r = result(state)
    assert r.status == "fail"
    worst = {entry["name"]: entry for entry in r.metrics["worst"]}
    assert worst["fc.weight"] == {"name": "fc.weight", "nan": 4, "inf": 1, "share": pytest.approx(5 / 128)}
    assert worst["fc.bias"]["share"] == 1.0 and r.metrics["worst"][0]["name"] == "fc.bias"  # worst first
    assert r.metrics["nonfinite_values"] == 21 and r.metrics["nonfinite_share"] == pytest.approx(21 / 144)
    assert set(r.findings[0].where) == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("part", ["real", "imag"])
def test_complex_tensors_count_both_parts(part):
    state = base()
    spectrum = torch.ones(8, dtype=torch.complex64)
    spectrum[3] = complex(float("nan"), 1.0) if part == "real" else complex(1.0, float("inf"))
    state["filter"] = spectrum
    r = result(state)
    assert r.status == "fail" and r.findings[0].where == ("filter",)
    assert r.metrics["worst"][0]["share"] == pytest.approx(1 / 16)  # one of 8 × 2 real values


def test_finite_complex_passes():
    assert result({**base(), "filter": torch.randn(4, 4, dtype=torch.complex128)}).status == "pass"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_nan_fails_and_its_largest_finite_value_passes(dtype):
    state = {name: tensor.to(dtype) for name, tensor in base().items()}
    state["fc.weight"][2, 2] = torch.finfo(dtype).max  # large, but finite
    assert result(state).status == "pass"
    state["fc.weight"][0, 0] = float("nan")
    r = result(state)
    assert r.status == "fail" and r.metrics["worst"][0] == {"name": "fc.weight", "nan": 1, "inf": 0, "share": 1 / 128}


def test_overflow_to_inf_in_float16_fails():
    state = {"fc.weight": (torch.ones(4, 4) * 1e5).half()}  # 1e5 > 65504: every value is Inf
    r = result(state)
    assert r.status == "fail" and r.metrics["fully_nonfinite"] == 1


class CountingTensors(InMemoryTensors):
    def __init__(self, tensors):
        super().__init__(tensors)
        self.loaded: list[str] = []

    def load(self, name):
        self.loaded.append(name)
        return super().load(name)


def test_integer_tensors_are_never_read():
    source = CountingTensors({**base(), "steps": torch.tensor(10**15), "index": torch.arange(5), "flags": torch.ones(3, dtype=torch.bool)})
    r = run_check(NonFinite(), Weights(source=source))
    assert r.status == "pass" and r.metrics["tensors_checked"] == 2
    assert set(source.loaded) == {"fc.weight", "fc.bias"}


def test_no_floating_tensor_skips():
    assert result({"steps": torch.tensor(3)}).status == "skip"


def test_a_mask_of_negative_inf_is_not_a_fault_but_positive_inf_or_nan_in_it_is():
    mask = torch.full((4, 4), float("-inf")).triu(1)
    r = result({**base(), "attn.causal_mask": mask})
    assert r.status == "pass" and r.metrics["masks"] == ["attn.causal_mask"] and "−Inf" in r.notes[0]
    assert result({**base(), "attn.weight_bias": mask}).status == "fail", "not named like a mask"
    assert result({**base(), "attn.causal_mask": mask}, mask_pattern="").status == "fail", "the guard can be turned off"
    assert result({**base(), "attn.causal_mask": -mask}).status == "fail", "+Inf is no mask value"
    nan_mask = mask.clone()
    nan_mask[0, 0] = float("nan")
    assert result({**base(), "attn.causal_mask": nan_mask}).status == "fail"


def test_the_worst_list_is_bounded_but_where_names_every_tensor():
    state = {f"layer{i}.weight": torch.full((2, 2), float("nan")) for i in range(30)}
    r = result(state)
    assert len(r.metrics["worst"]) == 20 and len(r.findings[0].where) == 30
    assert "diverged" in " ".join(r.findings[0].advice)
