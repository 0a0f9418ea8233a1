"""The weights section of a report: what the checkpoint holds, layer by layer, and which checks flagged each layer.

    {"path", "format", "sha256", "tensors": 42, "parameters": 1234567, "dtypes": {"float32": 40, "int64": 2},
     "optimizer": true, "scheduler": false, "against": "base.pt" | null, "extra": {"epoch": 3},
     "checks": ["non-finite", "dead-units", ...],          # the columns of the heatmap: weight checks that ran
     "notes": ["dropped the wrapper prefix 'module.' ..."],  # what the reader did to the names, what it left out
     "layers": [{"name", "kind", "shape", "dtype", "parameters", "tensors": [...],
                 "flags": {"untrained-layers": "fail"}, "worst": "fail"}]}   # worst first

A layer is flagged by a check when one of the check's non-pass findings names the layer or one of its
tensors in `where`. Renderers draw the per-layer table and the layers x checks heatmap from this data.
"""
from __future__ import annotations

from ..core.evidence import Weights
from ..core.results import RANK, CheckResult, clean, worst_status
from ..probes.weight_layout import layers


def flags_by_layer(weights: Weights, results: list[CheckResult]) -> dict[str, dict[str, str]]:
    """{layer name: {check slug: worst status of its findings that name the layer}}."""
    owner = {tensor: layer.name for layer in layers(weights) for tensor in layer.tensors.values()}
    names = {layer.name for layer in layers(weights)}
    flags: dict[str, dict[str, str]] = {}
    for result in results:
        for finding in result.findings:
            if finding.status == "pass":
                continue
            for where in finding.where:
                layer = where if where in names else owner.get(where)
                if layer is None:
                    continue
                marks = flags.setdefault(layer, {})
                marks[result.check] = worst_status([marks.get(result.check, "pass"), finding.status])
    return flags


def weights_summary(weights: Weights, results: list[CheckResult], notes: list[str] | None = None) -> dict:
    """The report's `weights` section (see the module docstring); `notes` are the reader's (what it left out, ...)."""
    flags = flags_by_layer(weights, results)
    rows = []
    dtypes: dict[str, int] = {}
    total = 0
    for order, layer in enumerate(layers(weights)):
        infos = {name: weights.info(name) for name in layer.tensors.values()}
        for info in infos.values():
            dtypes[info.dtype] = dtypes.get(info.dtype, 0) + 1
        count = sum(info.numel for info in infos.values())
        total += count
        marks = flags.get(layer.name, {})
        rows.append({"name": layer.name or "(top level)", "kind": layer.kind, "shape": list(layer.shape),
                     "dtype": infos[layer.main].dtype, "parameters": count, "tensors": list(layer.tensors.values()),
                     "flags": marks, "worst": worst_status(marks.values()) if marks else "pass", "order": order})
    rows.sort(key=lambda row: (-RANK[row["worst"]], -len(row["flags"]), row["order"]))
    for row in rows:
        del row["order"]
    return {
        "path": weights.path, "format": weights.format, "sha256": weights.sha256,
        "tensors": len(weights.names()), "parameters": total, "dtypes": dtypes,
        "optimizer": weights.optimizer is not None, "scheduler": weights.scheduler is not None,
        "against": weights.base.path if weights.base is not None else None,
        "extra": clean({k: v for k, v in weights.extra.items() if isinstance(v, (int, float, str, bool))}),
        "checks": [r.check for r in results if r.evidence == "weights" and r.status != "skip"],
        "notes": list(notes or []),
        "layers": rows,
    }
