"""dead-units: units of Linear/conv layers and norm channels that the weights show to be dead."""
from __future__ import annotations

from ..core.check import Check, CheckContext
from ..core.evidence import Weights
from ..core.registry import register_check
from ..core.results import Figure, Finding, Measurement
from ..probes.unit_health import PAIR_THRESHOLD, REL_THRESHOLD, UNIT_KINDS, LayerUnits, survey
from ..probes.weight_layout import layers

WORST = 20  # layers detailed in the metrics, dead units listed per layer


@register_check
class DeadUnits(Check):
    """Dead units: output rows, filters and norm channels that the weights alone show to be dead.

    What it checks
    For every Linear and convolution weight, the L2 norm of each output row (filter), and for every
    LayerNorm/RMSNorm/BatchNorm, each scale |γ|. A unit is dead when its incoming row is ~0 (at most
    `rel_threshold` × the median norm of the layer's nonzero rows; exact zeros always count: it
    outputs its bias alone), when its scale is ~0 (the channel outputs its β alone), or when its
    incoming row and its outgoing column in the next layer are both small (each at most
    `pair_threshold` × its layer's median: a unit that stopped firing and that weight decay has
    been shrinking on both sides). The next layer is inferred, not known: the next Linear/conv in
    checkpoint order in the same parent module whose input width is this layer's output width,
    with only BatchNorms between (a LayerNorm between, or a name like a query/key/value projection,
    a router or a shortcut, ends the search). Per layer it judges the share of dead units. Norm
    layers whose scales are centred on 0 (an offset parameterization, output × (1 + γ)), weights
    stored transposed (Hugging Face's Conv1D) and tensors with NaN/Inf (see non-finite) are not
    judged.

    Why it matters
    A dead unit costs compute and contributes nothing: its output does not depend on the input,
    and a unit whose incoming and outgoing weights are both 0 sits at a saddle where its gradients
    are 0 too, so training never revives it. Networks trained with large learning rates, ReLUs
    and weight decay lose a growing share of their units this way (Sokar et al., ICML 2023, "The
    Dormant Neuron Phenomenon in Deep RL"; Lu et al. 2019, "Dying ReLU"); a layer that is
    entirely dead blocks everything behind it. Healthy trained layers keep every row within a
    small factor of the median (on the case book's trained MLPs the smallest row is above 0.4 × the
    median, against 1e-3 here). A ReLU unit that dies without weight decay keeps its weights and
    needs activations, not weights, to be seen. Structured pruning zeroes rows on purpose: those
    are dead units too; raise `fail_share` to accept them.

    Evidence
    `dead_units`, `units_checked`, `dead_share` (of all units), `layers_with_dead`, `paired_layers`
    (how many layers have an inferred consumer), and `worst`: the 20 layers with the largest share
    of dead units, each with {tensor, kind, units, dead, share, zero, faded, consumer, indices,
    biases} (the first 20 dead units and their biases). A bar chart of the share per layer.

    Fixes
    reinit-dead-units re-initializes the dead units of layers with an inferred consumer (and resets
    the ~0 norm scales), keeping the network's function; dead units of a layer without one (an
    output layer, a residual stream) are reported without a fix: look at the learning rate, the
    activation (LeakyReLU/GELU instead of ReLU) and the weight decay.

    Options
    rel_threshold (1e-3): a row or scale at most this × its layer's median is ~0.
    pair_threshold (0.05): incoming row and outgoing column both at most this × their layer's median: a faded unit.
    fail_share (0.1): fail when a layer has more than this share of dead units (or all of them); any dead unit warns.
    """

    slug = "dead-units"
    code = "MD012"
    title = "Dead units in the weights"
    needs = "weights"
    fixes = ("reinit-dead-units",)
    default_options = {"rel_threshold": REL_THRESHOLD, "pair_threshold": PAIR_THRESHOLD, "fail_share": 0.1}

    def requires(self, weights: Weights) -> str | None:
        if not any(layer.kind in UNIT_KINDS for layer in layers(weights)):
            return "no Linear, convolution or normalization layer recognised by tensor names and shapes"
        return None

    def measure(self, weights: Weights, ctx: CheckContext) -> Measurement:
        o = self.options
        found = survey(weights, o["rel_threshold"], o["pair_threshold"])
        judged = [units for units in found if not units.skipped]
        dead = sorted((units for units in judged if units.dead), key=lambda units: -units.share)
        total = sum(units.units for units in judged)
        metrics = {
            "layers_checked": len(judged), "units_checked": total, "dead_units": sum(len(u.dead) for u in dead),
            "layers_with_dead": len(dead), "paired_layers": sum(units.consumer is not None for units in judged),
            "worst": [self.describe(weights, units) for units in dead[:WORST]],
            "failing": [u.tensor for u in dead if u.share > o["fail_share"] or len(u.dead) == u.units],
            "warning": [u.tensor for u in dead if not (u.share > o["fail_share"] or len(u.dead) == u.units)],
            "unrevivable": [u.tensor for u in dead if not u.revivable],
        }
        metrics["dead_share"] = metrics["dead_units"] / total if total else 0.0
        notes = [f"{metrics['paired_layers']} layer(s) paired with the layer inferred to consume their outputs "
                 "(by checkpoint order, parent module and width: inferred from names and shapes, not known)"]
        reasons: dict[str, list[str]] = {}
        for units in found:
            if units.skipped:
                reasons.setdefault(units.skipped, []).append(f"`{units.tensor}`")
        notes += [f"{len(names)} layer(s) not judged, {reason}: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}"
                  for reason, names in reasons.items()]
        return Measurement(metrics=metrics, figures=lambda: self.figures(metrics["worst"]), notes=notes)

    @staticmethod
    def describe(weights: Weights, units: LayerUnits) -> dict:
        indices = units.dead[:WORST]
        biases = weights.tensor(units.bias).detach().float()[indices].tolist() if units.bias else []
        return {"tensor": units.tensor, "kind": units.kind, "units": units.units, "dead": len(units.dead),
                "share": units.share, "zero": len(units.zero), "faded": len(units.faded),
                "consumer": units.consumer, "indices": indices, "biases": biases}

    def figures(self, worst: list[dict]) -> list[Figure]:
        if not worst:
            return []
        return [Figure("bar", "Share of dead units in the layers that have any", {
            "labels": [entry["tensor"] for entry in worst], "values": [entry["share"] for entry in worst],
            "xlabel": "layer", "ylabel": "share of dead units",
            "hlines": [{"y": self.options["fail_share"], "label": "fail above"}]})]

    def judge(self, measurement: Measurement) -> list[Finding]:
        m = measurement.metrics
        if not m["dead_units"]:
            return [Finding("pass", "alive", f"no dead units in {m['layers_checked']} layer(s) "
                            f"({m['units_checked']} units)", ("dead_units", "units_checked"))]
        by_tensor, limit = {entry["tensor"]: entry for entry in m["worst"]}, self.options["fail_share"]
        found = []
        for status, names in (("fail", m["failing"]), ("warn", m["warning"])):
            if not names:
                continue
            first = by_tensor.get(names[0])  # names keep the worst-first order: detailed unless 20 worse ones are
            entirely = [name for name in names if name in by_tensor and by_tensor[name]["dead"] == by_tensor[name]["units"]]
            what = (f"more than {limit:.0%} of their units dead" + (f", {len(entirely)} entirely" if entirely else "")
                    if status == "fail" else "a few dead units")
            worst = f"`{names[0]}`" + (f" {first['dead']} of {first['units']} ({first['share']:.0%})" if first else "")
            message = (f"{len(names)} layer(s) with {what}: worst {worst}; "
                       f"{m['dead_units']} of {m['units_checked']} units dead in all")
            fixable = [name for name in names if name not in m["unrevivable"]]
            found.append(Finding(status, "dead-layer" if entirely else "dead-units", message,
                                 ("dead_units", "dead_share", "worst"), ("reinit-dead-units",) if fixable else (),
                                 self.advice(names, m, entirely), names))
        return found

    @staticmethod
    def advice(names: list[str], m: dict, entirely: list[str]) -> list[str]:
        lines = []
        stuck = [name for name in names if name in m["unrevivable"]]
        if stuck:
            lines.append(f"no consumer inferred for {', '.join(f'`{n}`' for n in stuck[:5])}"
                         f"{' …' if len(stuck) > 5 else ''} (an output layer or a residual stream): reinit-dead-units "
                         "leaves them; for an output layer a dead row is a class or token that gets a constant logit")
        if entirely:
            lines.append("an all-zero layer is either collapsed or zero-initialized by design (LoRA B, adaLN-Zero, a "
                         "zero-init residual branch, a norm stored as an offset, output × (1 + γ)) and never updated: "
                         "check that it is in the optimizer")
        lines.append("to keep units alive in training: lower the learning rate, use LeakyReLU/GELU instead of ReLU, "
                     "reduce weight decay; a structurally pruned model zeroes rows on purpose (raise fail_share)")
        return lines
