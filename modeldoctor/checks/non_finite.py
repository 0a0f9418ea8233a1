"""non-finite: which tensors of a checkpoint hold NaN or Inf, and what share of each."""
from __future__ import annotations

import re

import torch

from ..core.check import Check, CheckContext
from ..core.evidence import Weights
from ..core.registry import register_check
from ..core.results import Figure, Finding, Measurement
from ..probes.weight_layout import split_name
from ..probes.weight_stats import tensor_stats

WORST = 20  # tensors listed in the metrics


@register_check
class NonFinite(Check):
    """Non-finite weights: the tensors of the checkpoint that hold NaN or ±Inf, and what share of each.

    What it checks
    Reads every floating-point and complex tensor once (the shared per-tensor pass of
    `probes.weight_stats`; a complex value counts as two, its real and imaginary parts) and counts
    its NaN and ±Inf values. Integer and bool tensors (step counters, index buffers) cannot hold
    them and are not read. A buffer whose name matches `mask_pattern` and whose only non-finite
    values are −Inf is an additive attention mask (−Inf where attention is forbidden): it is
    listed in a note, not failed.

    Why it matters
    One NaN in a weight turns every output it reaches into NaN, and an optimizer step with a NaN
    gradient writes NaN into every parameter it updates; a checkpoint saved after that step is
    broken, whatever its loss curve said before. The values are gone: no surgery on the file can
    recover them. Usual causes: a learning rate too high for the model (the loss spikes, then the
    weights overflow), no gradient clipping, float16 training without loss scaling, and log, sqrt
    or division of values that reach 0.

    Evidence
    `nonfinite_tensors` (how many tensors are affected), `nonfinite_values` and `nonfinite_share`
    (of all floating values), `tensors_checked`, and `worst`: the 20 most affected tensors with
    {name, nan, inf, share}; a bar chart of their shares. The finding's `where` lists every
    affected tensor.

    Fixes
    None that modeldoctor can apply: restore the last checkpoint whose tensors are finite, then
    find the first step where the loss or a gradient went non-finite (`torch.autograd.
    set_detect_anomaly`, or `modeldoctor watch` on the loop) and remove the cause there: lower the
    learning rate or warm it up, clip gradients (`clip_grad_norm_`, max_norm 1.0), use bfloat16 or
    a GradScaler for half precision, guard log/sqrt/division with an epsilon.

    Options
    mask_pattern ("mask"): a regular expression; tensors whose name matches it and that hold only −Inf are masks, not faults.
    """

    slug = "non-finite"
    code = "MD011"
    title = "NaN and Inf in the weights"
    needs = "weights"
    fixes = ()
    default_options = {"mask_pattern": "mask"}

    def requires(self, weights: Weights) -> str | None:
        if not any(floating(weights.info(name).dtype) for name in weights.names()):
            return "the checkpoint holds no floating-point or complex tensors"
        return None

    def measure(self, weights: Weights, ctx: CheckContext) -> Measurement:
        mask = re.compile(self.options["mask_pattern"], re.IGNORECASE) if self.options["mask_pattern"] else None
        affected, masks, checked, values = [], [], 0, 0
        for name in weights.names():
            info = weights.info(name)
            if not floating(info.dtype):
                continue  # integer and bool tensors cannot hold NaN/Inf
            ctx.ensure_time("counting non-finite values")
            stats = tensor_stats(weights, name)
            size = stats.numel * (2 if info.dtype.startswith("complex") else 1)  # real values
            checked, values = checked + 1, values + size
            if not stats.nonfinite:
                continue
            if mask and stats.nan == 0 and mask.search(name) and not info.dtype.startswith("complex") and only_negative_inf(weights.tensor(name)):
                masks.append(name)
                continue
            affected.append({"name": name, "nan": stats.nan, "inf": stats.inf, "share": stats.nonfinite / size})
        total = sum(entry["nan"] + entry["inf"] for entry in affected)
        worst = sorted(affected, key=lambda entry: -entry["share"])[:WORST]
        metrics = {
            "tensors_checked": checked, "nonfinite_tensors": len(affected), "nonfinite_values": total,
            "nonfinite_share": total / values if values else 0.0, "worst": worst,
            "affected": [entry["name"] for entry in affected],  # every one, in checkpoint order (for `where`)
            "fully_nonfinite": sum(entry["share"] == 1.0 for entry in affected), "masks": masks,
        }
        notes = [f"{len(masks)} tensor(s) named like masks hold only −Inf (additive attention masks, not faults): "
                 + ", ".join(f"`{name}`" for name in masks[:5]) + (" …" if len(masks) > 5 else "")] if masks else []
        return Measurement(metrics=metrics, figures=lambda: self.figures(worst), notes=notes)

    def figures(self, worst: list[dict]) -> list[Figure]:
        if not worst:
            return []
        return [Figure("bar", "Share of non-finite values in the most affected tensors", {
            "labels": [entry["name"] for entry in worst], "values": [entry["share"] for entry in worst],
            "xlabel": "tensor", "ylabel": "share of NaN/Inf values"})]

    def judge(self, measurement: Measurement) -> list[Finding]:
        m = measurement.metrics
        if not m["nonfinite_tensors"]:
            masks = f" ({len(m['masks'])} −Inf mask(s) aside)" if m["masks"] else ""
            return [Finding("pass", "finite", f"all {m['tensors_checked']} floating tensor(s) are finite{masks}",
                            ("tensors_checked", "nonfinite_tensors"))]
        first = m["worst"][0]
        modules = {split_name(name)[0] for name in m["affected"]}
        spread = (f"{m['fully_nonfinite']} of them entirely" if m["fully_nonfinite"] else "in isolated values")
        message = (f"{m['nonfinite_tensors']} of {m['tensors_checked']} tensor(s) hold NaN/Inf ({spread}; "
                   f"{m['nonfinite_share']:.2%} of all values); worst `{first['name']}`: {first['nan']} NaN, "
                   f"{first['inf']} Inf ({first['share']:.1%})")
        advice = [
            "modeldoctor cannot repair non-finite weights: restore the last checkpoint whose tensors are finite",
            "find the first non-finite step (torch.autograd.set_detect_anomaly, or `modeldoctor watch` on the loop) "
            "and remove its cause: lower or warm up the learning rate, clip gradients (clip_grad_norm_, max_norm 1.0), "
            "use bfloat16 or a GradScaler in half precision, add an epsilon to log/sqrt/division",
        ]
        if m["fully_nonfinite"] and len(modules) > 1:
            advice.insert(1, "whole tensors across several layers are non-finite: training diverged and the optimizer "
                             "wrote NaN/Inf into every parameter it updated after that step")
        return [Finding("fail", "non-finite", message, ("nonfinite_tensors", "nonfinite_share", "worst"),
                        advice=advice, where=m["affected"])]


def floating(dtype: str) -> bool:
    """Floating and complex tensors can hold NaN/Inf; integer and bool ones cannot."""
    return dtype.startswith(("float", "bfloat", "complex"))


def only_negative_inf(tensor: torch.Tensor) -> bool:
    """True when every infinite value of `tensor` is −Inf (read once more; only for mask-named tensors)."""
    return not bool(torch.isposinf(tensor).any())
