"""untrained-layers: layers whose weights still look like their initialization (frozen, or not in the optimizer)."""
from __future__ import annotations

import math
import statistics

from ..core.check import Check, CheckContext
from ..core.evidence import Weights
from ..core.registry import register_check
from ..core.results import Figure, Finding, Measurement
from ..probes.init_fingerprint import candidates, compare_to_base, is_constant, match_init, norm_dispersion_p
from ..probes.weight_layout import Layer, layers, split_name
from ..probes.weight_stats import tensor_stats

TESTED_KINDS = ("linear", "conv", "embedding", "attention-in-proj", "rnn")
ADVICE = ("unfreeze it (requires_grad=True) or add its parameters to the optimizer; check that the optimizer "
          "was built after the model was final (a layer added or replaced later is not in it)")
LISTED = 100  # at most this many units / tensors kept per metrics list


def unit_tensors(layer: Layer) -> list[str]:
    """The tensors whose values say whether `layer` trained: its weight(s), never its bias."""
    if layer.kind == "rnn":
        return [name for leaf, name in layer.tensors.items() if leaf.startswith("weight_")]
    return [layer.tensors[leaf] for leaf in ("weight", "in_proj_weight") if leaf in layer.tensors][:1]


def is_lora_base(layer: Layer) -> bool:
    """A layer wrapped in LoRA: adapter tensors beside its weight (modeldoctor.nn.lora), or PEFT's `base_layer`."""
    return layer.name.endswith(".base_layer") or any(leaf.lower().startswith("lora_") for leaf in layer.tensors)


def names(units: list[dict], count: int = 3) -> str:
    said = ", ".join(f"'{u['layer']}'" + (f" ({u['what']})" if u.get("what") else "") for u in units[:count])
    return said + (f" and {len(units) - count} more" if len(units) > count else "")


@register_check
class UntrainedLayers(Check):
    """Untrained layers: weights still at their initialization, the fingerprint of a frozen layer or one the optimizer never saw.

    What it checks
    Each layer's weight (probes.weight_layout: linear, conv, embedding, attention in-projection, every
    weight of an RNN; biases are not tested) against the initializations it commonly starts from: the
    PyTorch defaults (Linear/Conv U(±1/√fan_in), Embedding N(0, 1), MultiheadAttention xavier_uniform,
    RNN U(±1/√hidden)), N(0, 0.02) or the Hugging Face `initializer_range`, truncated N(0, 0.02) (timm),
    xavier and kaiming uniform/normal. A weight matches init when three tests of the closest one all
    accept it: a one-sample KS test of its sample (p > `p_min` and D < `d_max`), its std over all its
    values (within `max_std_z` standard errors), and the spread of its row and column norms (iid
    entries make it known; trained units and inputs get their own scales, p > `p_min`). It clearly
    trained when the KS test rejects it (p ≤ `p_min`, D ≥ `d_max`); a weight every value of which is
    equal (a zero init) is at init, exactly, and one with a value beyond the bound of the uniform init it
    is closest to has moved, exactly. A LoRA-wrapped layer's frozen base is not tested (frozen is its
    design): its adapter is, and one whose B is still all 0 never trained. Norm layers are at init when the weight is constant and
    the bias all 0; BatchNorm statistics were never updated when running_mean is all 0 and running_var
    all 1. With `--against BASE`, each parameter's relative change ‖W − W0‖/‖W0‖ decides instead;
    tensors absent from the base or of another shape are tested as above.

    Why it matters
    A layer with requires_grad=False, or one missing from the optimizer (built before the layer was
    added or replaced, or over a subset of parameters), keeps its random weights: the model trains
    around it, runs without errors and is worse than it should be. BatchNorm trained in eval mode
    keeps mean 0 / var 1 statistics, so in eval mode it normalizes with statistics of no data at all.

    Evidence
    A bar chart of KS D per tested weight with the `d_max` line, a table of the weights at init and
    of the closest others, and with a base a bar chart of log10 relative change per tensor. Metrics:
    counts tested / skipped / at init / trained / moved slightly, each at-init weight's closest init,
    D, p and scale against the trained weights. A weight at init beside clearly trained ones fails,
    named, unless its std is above `max_scale_ratio` times the trained weights' median (Adam moves
    every weight by about the same step and trained weights grow, so a weight of larger scale can
    look untouched after a short run) or it matches a normal init on fewer than `min_numel_normal`
    values (updates that are mostly noise keep a normal histogram normal): then it warns, to be
    settled with --against. With nothing clearly
    trained, the whole checkpoint fails when at least `whole_share` of the weights with a verdict
    match init; BatchNorm statistics at their defaults fail. With a base: nothing changed fails, a
    subset unchanged warns (a frozen backbone in fine-tuning is often deliberate).

    Fixes
    None on the weights: the remedy is in training. Unfreeze the layer (requires_grad=True) or add
    its parameters to the optimizer, built after the model is final; for BatchNorm, train in train
    mode, or recompute the statistics with a few batches in train mode.

    Options
    p_min (0.01): at init needs a KS (and norm-spread) p-value above this; clearly trained, KS p at most this.
    d_max (0.04): at init needs KS D below this, clearly trained D at least this (an effect size: at
        1024 values a true init stays below it 92% of the time, briefly trained weights give 0.04-0.1).
    max_std_z (3.0): at init needs the std within this many standard errors of the init's (0.3% of true inits fail).
    min_numel (1024): weights with fewer values are skipped (counted): below this the tests cannot tell a briefly
        trained weight from its init (trained 512-value layers give D ≈ 0.06, p ≈ 0.05).
    min_numel_normal (16384): a weight matching a normal init fails only with at least this many values, else warns:
        noise-driven updates keep a normal histogram normal, and on fewer values the std is known to worse than ±0.55%
        (a trained 32x32 attention projection kept N(0, 0.02) within 4%).
    max_scale_ratio (1.0): a weight at init whose std exceeds this multiple of the trained weights' median warns
        instead of failing.
    whole_share (0.9): with nothing clearly trained, the whole checkpoint fails when this share of the weights at
        init or moved slightly are at init.
    unchanged_rtol (1e-7): with a base, a tensor whose relative change is at most this did not train.
    """

    slug = "untrained-layers"
    code = "MD013"
    title = "Untrained layers"
    needs = "weights"
    default_options = {"p_min": 0.01, "d_max": 0.04, "max_std_z": 3.0, "min_numel": 1024, "min_numel_normal": 16384,
                       "max_scale_ratio": 1.0, "whole_share": 0.9, "unchanged_rtol": 1e-7}

    def test_weight(self, weights: Weights, layer: Layer, name: str, init_range: float | None) -> dict | None:
        """One weight's state: at-init | trained | moved (significantly, a little) | inconclusive; None if too small."""
        o, st = self.options, tensor_stats(weights, name)
        unit = {"layer": layer.name, "tensor": name, "kind": layer.kind, "std": st.std, "numel": st.numel}
        if layer.kind == "rnn":
            unit["what"] = split_name(name)[1]
        if is_constant(st):  # a zero (or other constant) init: exact evidence, whatever the size
            return {**unit, "state": "at-init", "init": f"constant {st.mean:g}", "exact": True}
        if not st.floating or st.numel < o["min_numel"] or len(st.shape) < 2:
            return None
        hh = next((weights.info(n).shape for leaf, n in layer.tensors.items() if leaf.startswith("weight_hh")), None)
        match = match_init(st.sample, candidates(st.shape, init_range, hh[1] if hh else None))
        z, norms_p = match.std_z(st.std, st.numel), norm_dispersion_p(st)
        # a uniform init draws nothing beyond its bound: a value past it is exact proof the weight moved
        beyond = match.candidate.kurtosis == 1.8 and st.abs_max > match.candidate.std * math.sqrt(3) * (1 + 1e-5)
        rejected = match.p <= o["p_min"] or z > o["max_std_z"] or norms_p <= o["p_min"] or beyond
        if not rejected and match.d < o["d_max"]:
            state = "at-init"
        elif match.p <= o["p_min"] and match.d >= o["d_max"]:
            state = "trained"
        else:
            state = "moved" if rejected else "inconclusive"
        return {**unit, "state": state, "init": match.init, "d": match.d, "p": match.p, "std_z": z, "norms_p": norms_p,
                "normal": match.candidate.kurtosis == 3.0, "beyond_bound": beyond}

    def test_adapter(self, weights: Weights, layer: Layer) -> dict | None:
        """A LoRA-wrapped layer: its base is frozen by design; the adapter trained unless its B is still constant (0)."""
        b = next((name for leaf, name in layer.tensors.items() if leaf.lower() == "lora_b"), None)
        if b is None:
            return None
        still = is_constant(tensor_stats(weights, b))
        return {"layer": layer.name, "tensor": b, "kind": "lora", "what": "LoRA B", "exact": True,
                "state": "at-init" if still else "trained", "init": "constant (LoRA B starts at 0)" if still else "not constant",
                "std": tensor_stats(weights, b).std, "numel": tensor_stats(weights, b).numel}

    def test_norm(self, weights: Weights, layer: Layer) -> dict | None:
        """A norm layer is at init when its weight is constant and its bias all 0 (exact, any size)."""
        weight, bias = (tensor_stats(weights, layer.tensors[leaf]) if leaf in layer.tensors else None for leaf in ("weight", "bias"))
        if weight is None or weight.numel < 2:
            return None
        still = is_constant(weight) and (bias is None or is_constant(bias, 0.0))
        return {"layer": layer.name, "tensor": layer.main, "kind": layer.kind, "state": "at-init" if still else "trained",
                "init": f"weight {weight.mean:g}, bias 0" if still else "not constant", "exact": True}

    def measure(self, weights: Weights, ctx: CheckContext) -> Measurement:
        init_range = (weights.extra.get("hf_config") or {}).get("initializer_range")
        base, changes = (compare_to_base(weights, weights.base, self.options["unchanged_rtol"], LISTED)
                         if weights.base is not None else (None, {}))
        units, bn_default, skipped_small, skipped_kind = [], [], 0, 0
        for layer in layers(weights):
            ctx.ensure_time("testing layers against their initialization")
            mean, var, tracked = (layer.tensors.get(leaf) for leaf in ("running_mean", "running_var", "num_batches_tracked"))
            if mean and var and is_constant(tensor_stats(weights, mean), 0.0) and is_constant(tensor_stats(weights, var), 1.0):
                batches = int(weights.tensor(tracked).sum()) if tracked and weights.info(tracked).numel else None
                bn_default.append({"layer": layer.name, "tensors": [mean, var], "num_batches_tracked": batches})
            if is_lora_base(layer):  # a frozen base under an adapter is the design, not a fault
                found = [self.test_adapter(weights, layer)]
            elif layer.kind in ("norm", "batchnorm"):  # tensors the base comparison judged are not tested again
                found = [] if layer.main in changes else [self.test_norm(weights, layer)]
            elif layer.kind in TESTED_KINDS:
                found = [self.test_weight(weights, layer, name, init_range) for name in unit_tensors(layer) if name not in changes]
            else:
                skipped_kind += 1
                continue
            skipped_small += sum(unit is None for unit in found)
            units += [unit for unit in found if unit is not None]
        count = {state: sum(u["state"] == state for u in units) for state in ("at-init", "trained", "moved", "inconclusive")}
        trained_std = [u["std"] for u in units if u["state"] == "trained" and not u.get("exact")] + [
            tensor_stats(weights, name).std for name, change in changes.items()  # weights that changed from the base
            if change > self.options["unchanged_rtol"] and len(weights.info(name).shape) >= 2]
        median_std = statistics.median(trained_std) if trained_std else None
        at_init = [u for u in units if u["state"] == "at-init"]
        for unit in at_init:  # how its scale compares with the trained weights' (None: nothing to compare with)
            unit["scale_ratio"] = unit["std"] / median_std if median_std and not unit.get("exact") else None
        tested = [u for u in units if not u.get("exact")]
        closest = sorted((u for u in tested if u["state"] != "at-init"), key=lambda u: u["d"])[:10]
        metrics = {"tested": len(units), "skipped_small": skipped_small, "skipped_unknown_kind": skipped_kind,
                   "at_init": count["at-init"], "trained": count["trained"], "moved": count["moved"],
                   "inconclusive": count["inconclusive"], "at_init_units": at_init[:LISTED], "closest": closest,
                   "trained_median_std": median_std, "bn_default": bn_default[:LISTED], "initializer_range": init_range,
                   "base": base}
        return Measurement(metrics=metrics, figures=lambda: self.figures(tested, at_init + closest, changes))

    def figures(self, tested: list[dict], listed: list[dict], changes: dict[str, float]) -> list[Figure]:
        figures = [
            Figure("bar", "KS distance of each weight from its closest initialization", {
                "labels": [u["tensor"] for u in tested[:60]], "values": [u["d"] for u in tested[:60]], "ylabel": "KS D",
                "hlines": [{"y": self.options["d_max"], "label": "d_max (below it, with p > p_min: matches init)"}]}),
            Figure("table", "Weights at their initialization, then the closest of the others", {
                "columns": ["layer", "tensor", "state", "closest init", "KS D", "p"],
                "rows": [[u["layer"], u["tensor"], u["state"], u["init"], u.get("d"), u.get("p")] for u in listed]}),
        ] if tested or listed else []
        if changes:
            shown = list(changes.items())[:60]
            figures.append(Figure("bar", "Relative change of each tensor from the base (--against)", {
                "labels": [name for name, _ in shown], "ylabel": "log10 ‖W − W0‖ / ‖W0‖",
                "values": [math.log10(c) if 0 < c < math.inf else None for _, c in shown]}))
        return figures

    def base_findings(self, base: dict) -> list[Finding]:
        """With --against: nothing changed fails, a subset unchanged warns, no shared tensor warns."""
        if base["compared"] and not base["changed"]:
            return [Finding("fail", "unchanged", f"nothing changed: all {base['compared']} tensors equal those of the base "
                            "(--against): no optimizer step reached them (saved before training, or the wrong file?)",
                            ("base",), advice=[ADVICE], where=base["unchanged_tensors"] + base["unchanged_other"])]
        if base["unchanged_tensors"]:
            layers_ = base["unchanged_layers"]
            other = [f"{len(base['unchanged_other'])} other unchanged tensor(s) may be buffers"] if base["unchanged_other"] else []
            return [Finding("warn", "frozen", f"{len(base['unchanged_tensors'])} of {base['compared']} tensors did not change "
                            f"from the base (--against), in layer(s) {', '.join(repr(n) for n in layers_[:3])}"
                            f"{' and more' if len(layers_) > 3 else ''}: frozen or never in the optimizer (a frozen "
                            "backbone in fine-tuning is often deliberate)", ("base",),
                            advice=["if it was not meant to be frozen: " + ADVICE, *other], where=base["unchanged_tensors"])]
        if not base["compared"]:
            return [Finding("warn", "no-base-overlap", f"the base (--against) has none of this checkpoint's tensors with the "
                            f"same name and shape ({base['missing']} missing, {base['mismatched']} of another shape): "
                            "judged without it", ("base",), where=base["missing_tensors"] + base["mismatched_tensors"])]
        return []

    def init_findings(self, m: dict, strong: int) -> list[Finding]:
        """Weights at init: the whole checkpoint, those beside clearly trained ones (fail), the doubtful ones (warn)."""
        o, at_init = self.options, m["at_init_units"]
        if not at_init:
            return []
        where = [u["tensor"] for u in at_init]
        if not strong and (len(at_init) >= 2 or any(u.get("exact") for u in at_init)) \
                and len(at_init) >= o["whole_share"] * (len(at_init) + m["moved"]):
            first = next((u for u in at_init if not u.get("exact")), at_init[0])
            return [Finding("fail", "untrained", f"the whole checkpoint looks untrained: {len(at_init)} of "
                            f"{len(at_init) + m['moved']} weights with a verdict match their initialization (e.g. "
                            f"'{first['layer']}', {describe(first)}): saved before training?",
                            ("at_init", "trained", "moved", "at_init_units"), advice=[ADVICE],
                            where=where + [t for b in m["bn_default"] for t in b["tensors"]])]
        frozen = [u for u in at_init if strong and (u.get("exact") or (u["scale_ratio"] or math.inf) <= o["max_scale_ratio"]
                                                    and (not u.get("normal") or u["numel"] >= o["min_numel_normal"]))]
        slow = [u for u in at_init if u not in frozen]
        found = []
        if frozen:
            one = len(frozen) == 1
            found.append(Finding("fail", "frozen", f"{'layer' if one else 'layers'} {names(frozen)} still look{'s' if one else ''} "
                                 f"like {'its' if one else 'their'} initialization ({describe(frozen[0])}) while {strong} other "
                                 "weight(s) trained: frozen or never given to the optimizer", ("at_init_units", "trained"),
                                 advice=[ADVICE], where=[u["tensor"] for u in frozen]))
        if slow:
            ratio = max((u.get("scale_ratio") or 0) for u in slow)
            why = ("nothing else in the checkpoint clearly trained either (a short or lazy run, or too few testable "
                   "layers)" if not strong else f"its values are {ratio:.1f}x the scale of the trained weights (Adam moves "
                   "every weight by about the same step, so a large-scale weight can look untouched after a short run)"
                   if ratio > o["max_scale_ratio"] else "only norm layers show training, which says nothing of how far "
                   "this weight should have moved" if not ratio else f"a normal init plus the noise of training stays "
                   f"normal, and on fewer than {o['min_numel_normal']} values its std cannot show the difference")
            tell = "the base lacks it, so only its values can tell" if m.get("base") else "compare with --against BASE to tell"
            found.append(Finding("warn", "maybe-frozen", f"{names(slow)} still look(s) like the initialization "
                                 f"({describe(slow[0])}), but {why}: {tell}",
                                 ("at_init_units", "trained", "moved"), advice=["if it is frozen: " + ADVICE],
                                 where=[u["tensor"] for u in slow]))
        return found

    def judge(self, measurement: Measurement) -> list[Finding]:
        m, base = measurement.metrics, measurement.metrics.get("base")
        found = self.base_findings(base) if base else []
        found += self.init_findings(m, m["trained"] + (base["changed"] if base else 0))
        if m["bn_default"] and not any(f.kind == "untrained" for f in found):
            bns = m["bn_default"]
            found.append(Finding("fail", "bn-statistics", f"BatchNorm {names(bns)}: running_mean all 0 and running_var all 1, "
                                 "statistics never updated: in eval mode it normalizes with mean 0 / var 1 instead of the "
                                 "data's", ("bn_default",), advice=["train in train mode (model.train()), or recompute the "
                                 "statistics: reset_running_stats(), momentum=None, then a pass over training batches in train "
                                 "mode under torch.no_grad()"], where=[t for b in bns for t in b["tensors"]]))
        return found or [Finding("pass", "trained", self.healthy(m), ("tested", "at_init", "trained", "skipped_small"))]

    def healthy(self, m: dict) -> str:
        base, said = m.get("base"), []
        if base and base["compared"]:
            said.append(f"every one of the {base['compared']} tensors compared changed from the base (median relative "
                        f"change {base['median_change']:.3g})")
        if base and (base["missing"] or base["mismatched"]):
            said.append(f"{base['missing']} not in the base and {base['mismatched']} of another shape were KS-tested")
        if m["tested"]:
            said.append(f"none of {m['tested']} tested weights matches its initialization ({m['trained']} clearly trained, "
                        f"{m['moved'] + m['inconclusive']} moved slightly or inconclusive)")
        if m["skipped_small"] or m["skipped_unknown_kind"]:
            said.append(f"{m['skipped_small']} too small to test (< {self.options['min_numel']} values), "
                        f"{m['skipped_unknown_kind']} of unknown kind")
        return "; ".join(said) or "no layer to test"


def describe(unit: dict) -> str:
    if unit.get("exact"):
        return f"exactly {unit['init']}"
    return f"KS D={unit['d']:.3f}, p={unit['p']:.2g} against {unit['init']}"
