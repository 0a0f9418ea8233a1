"""grad-norms: trace gradient norms and update ratios over a few training steps of the subject's recipe."""
from __future__ import annotations

import numpy as np

from ..core.check import Check, CheckContext
from ..core.registry import register_check
from ..core.results import Figure, Finding, Measurement
from ..core.subject import Subject
from ..probes.gradtrace import GradTrace, GradTracer, RecordingBatches, group_summary, locate_nonfinite, summarize
from ..probes.training import train


@register_check
class GradNorms(Check):
    """Gradient-norm tracing: exploding, vanishing, non-finite and dead gradients, and update sizes.

    What it checks
    Trains a copy for a few steps with the subject's own loss and recipe and records, every step,
    the raw gradient norm (before clipping) of every trainable parameter, summed per module and
    per declared parameter group, the global norm, the loss, and the actual update ratio
    ‖w_after − w_before‖/‖w_before‖ of every ≥2-D weight. It fails on a NaN/Inf in the loss or a
    gradient (naming the first module where it appears, found by re-running that step with
    hooks); on exploding gradients (median global norm above a threshold, a steady rise, or
    AUTOTRAINER's first/last-layer rate r > 70); on vanishing gradients (r < 1e-3 and first-layer
    norm < 1e-4 while the loss is not falling); on parameters that never receive a nonzero gradient;
    on a declared group that is frozen or gets no gradient; and on update ratios far from ~1e-3.
    It warns on a starved group: trainable, but its median gradient norm is below `starved_ratio`
    × that of the group with the largest median (a tower the loss barely reaches).

    Why it matters
    A model can train without errors while most of it never learns: a tower behind `.detach()`,
    a deep sigmoid stack whose first layers get 1e-10 of the gradient, or a post-LN transformer
    whose gradients blow up without warmup. The seeds' advice "check gradient flow, print max
    gradient norms" is this check; the thresholds are AUTOTRAINER's (Zhang et al., ICSE 2021),
    gated on a stalled loss as it does, and CS231n's update:weight ≈ 1e-3 (measured as the
    actual Δw, which is what matters for Adam).

    Evidence
    A modules × steps heatmap of log10 gradient norm, the global norm and the loss per step, and a
    table of modules ranked by median gradient norm (with their update ratios). Metrics: global
    norm median/max and growth, first/last-layer rate r, loss drop, median update ratio, dead
    parameters and modules, where a non-finite value first appears, and per-group norms
    (`group_grad_norms`, `frozen_groups`, `dead_groups`, `starved_groups`), drawn as bars of
    log10 median gradient norm per declared group.

    Fixes
    grad-clip, warmup-cosine and pre-ln (post-LN transformers) for exploding or non-finite
    gradients; warmup-cosine and pre-ln (where a post-LN block exists) for oversized updates.
    The norms are measured before clipping, so grad-clip shows in the update ratios and the
    loss, not in the norms. Vanishing gradients need ReLU/residuals/normalisation or a better
    init; dead parameters and starved groups need the graph wired up (remove the `.detach()`,
    unfreeze, add them to the optimizer).

    Options
    steps (30): training steps traced.
    max_global_norm (10): fail when the median global gradient norm exceeds this.
    growth_rho (0.8), growth_factor (10): fail when log-norm rises with step (Spearman ρ above
    growth_rho) and the last fifth of the steps is growth_factor× the first fifth.
    max_grad_rate (70), min_grad_rate (1e-3), min_first_norm (1e-4): AUTOTRAINER's r bounds.
    loss_drop_gate (0.1): vanishing is declared only when the loss fell by less than this fraction.
    max_dead_params (0): fail when more parameters than this never get a nonzero gradient.
    fail_frozen_groups (True): fail when a declared param group has no trainable parameter.
    starved_ratio (1e-3): warn when a trainable group's median gradient norm is below this ×
    the largest group median.
    update_ratio_fail_below (1e-5), update_ratio_fail_above (0.1), update_ratio_warn_below (1e-4),
    update_ratio_warn_above (0.01): bands for the median update ratio of ≥2-D weights.
    heatmap_modules (60), table_rows (30): size limits of the figures.
    """

    slug = "grad-norms"
    code = "MD004"
    title = "Gradient norms"
    fixes = ("grad-clip", "warmup-cosine", "pre-ln")
    default_options = {
        "steps": 30, "max_global_norm": 10.0, "growth_rho": 0.8, "growth_factor": 10.0,
        "max_grad_rate": 70.0, "min_grad_rate": 1e-3, "min_first_norm": 1e-4, "loss_drop_gate": 0.1,
        "max_dead_params": 0, "fail_frozen_groups": True, "starved_ratio": 1e-3,
        "update_ratio_fail_below": 1e-5, "update_ratio_fail_above": 0.1,
        "update_ratio_warn_below": 1e-4, "update_ratio_warn_above": 0.01,
        "heatmap_modules": 60, "table_rows": 30,
    }

    def requires(self, subject: Subject) -> str | None:
        if not any(p.requires_grad for p in subject.model.parameters()):
            return "the model has no trainable parameters"
        return None

    def measure(self, subject: Subject, ctx: CheckContext) -> Measurement:
        model, batches = subject.model, RecordingBatches(subject.train_batches)
        tracer = GradTracer(model, on_nonfinite=lambda step: locate_nonfinite(model, subject.loss, batches.last))
        train(subject, self.options["steps"], batches=batches, deadline=ctx.deadline, monitor=tracer)
        trace = tracer.result()
        metrics, table = summarize(trace)
        groups = subject.capabilities.param_groups or {}
        if groups:
            metrics.update(group_summary(trace, groups, [n for n, _ in model.named_parameters()], self.options["starved_ratio"]))
        return Measurement(metrics=metrics, figures=lambda: self.figures(trace, table)
                           + ([self.group_figure(groups, metrics)] if groups else []))

    def group_figure(self, groups: dict, m: dict) -> Figure:
        """log10 median gradient norm per declared group, with the starved line; frozen groups show as n/a."""
        norms = [m["group_grad_norms"].get(g) for g in groups]
        largest = max((v for v in norms if v), default=None)
        ratio = self.options["starved_ratio"]
        return Figure("bar", "Gradient norm per parameter group", {
            "labels": [f"{g} (frozen)" if g in m["frozen_groups"] else g for g in groups],
            "values": [float(np.log10(v)) if v else None for v in norms],
            "ylabel": "log10 median ‖grad‖", "xlabel": "declared parameter group",
            "hlines": [{"y": float(np.log10(largest * ratio)), "label": f"starved: below {ratio:g} × largest"}]
            if largest and ratio > 0 else []})

    def figures(self, trace: GradTrace, table: list[list]) -> list[Figure]:
        modules = trace.module_norms()  # {module: (K,)}
        names = list(modules)
        if len(names) > self.options["heatmap_modules"]:
            names = [names[i] for i in np.linspace(0, len(names) - 1, self.options["heatmap_modules"]).round().astype(int)]
        with np.errstate(divide="ignore"):
            matrix = [np.log10(modules[n]).tolist() for n in names]  # (modules, K); log10(0) -> None in JSON
        steps = list(range(len(trace.losses)))
        finite = [v for v in [*trace.global_norms(), *trace.losses] if np.isfinite(v)]
        rows = table if len(table) <= self.options["table_rows"] else \
            table[: self.options["table_rows"] // 2] + table[-(self.options["table_rows"] // 2):]
        return [
            Figure("heatmap", "log10 gradient norm per module", {
                "matrix": matrix, "yticklabels": names, "xlabel": "step", "ylabel": "module",
                "colorbar": "log10 ‖grad‖"}),
            Figure("line", "Global gradient norm and loss", {
                "series": [{"name": "global grad norm", "x": steps, "y": trace.global_norms().tolist()},
                           {"name": "loss", "x": steps, "y": list(trace.losses)}],
                "xlabel": "step", "ylabel": "value", "logy": bool(finite) and min(finite) > 0}),
            Figure("table", "Modules ranked by median gradient norm", {
                "columns": ["module", "median grad norm", "max grad norm", "update ratio", "zero-grad steps"], "rows": rows}),
        ]

    def judge(self, measurement: Measurement) -> list[Finding]:
        """A finding for every threshold crossed, most important first (a pass when none is)."""
        o, m, found = self.options, measurement.metrics, []
        clip_warm_preln = ("grad-clip", "warmup-cosine", "pre-ln")
        if m["nonfinite_step"] is not None:
            found.append(Finding("fail", "nonfinite", f"non-finite {m['nonfinite_in']} at step {m['nonfinite_step']}: "
                                 f"{m['nonfinite_where']}", ("nonfinite_step", "nonfinite_in", "nonfinite_where"), clip_warm_preln))
        g, r = m["global_norm_median"], m["grad_rate"]
        if g is not None and g > o["max_global_norm"]:
            found.append(Finding("fail", "exploding", f"exploding gradients: median global norm {g:.3g} > {o['max_global_norm']:g} "
                                 f"(max {m['global_norm_max']:.3g}); largest in `{m['largest_grad_module']}`",
                                 ("global_norm_median", "global_norm_max"), clip_warm_preln))
        if (m["norm_growth_rho"] or 0) > o["growth_rho"] and (m["norm_growth"] or 0) > o["growth_factor"]:
            found.append(Finding("fail", "exploding", f"gradient norm grows steadily: ×{m['norm_growth']:.3g} over {m['steps']} "
                                 f"steps (Spearman ρ {m['norm_growth_rho']:.2f})", ("norm_growth", "norm_growth_rho"), clip_warm_preln))
        if r is not None and r > o["max_grad_rate"]:
            found.append(Finding("fail", "exploding", f"exploding towards the input: `{m['first_layer']}` gets {r:.3g}× the "
                                 f"gradient of `{m['last_layer']}` (r > {o['max_grad_rate']:g})", ("grad_rate",), clip_warm_preln))
        stalled = m["loss_drop"] is None or m["loss_drop"] < o["loss_drop_gate"]
        if r is not None and r < o["min_grad_rate"] and m["first_layer_grad_norm"] < o["min_first_norm"] and stalled:
            found.append(Finding("fail", "vanishing", f"vanishing gradients: `{m['first_layer']}` gets ‖g‖ "
                                 f"{m['first_layer_grad_norm']:.2g}, {r:.2g}× that of `{m['last_layer']}`, "
                                 f"and the loss fell only {m['loss_drop'] or 0:.1%}", ("grad_rate", "first_layer_grad_norm", "loss_drop")))
        for group in (m.get("frozen_groups") or []) if o["fail_frozen_groups"] else []:
            found.append(Finding("fail", "dead", f"declared group '{group}' is frozen: none of its parameters is trainable",
                                 ("frozen_groups",)))
        for group in m.get("dead_groups") or []:
            found.append(Finding("fail", "dead", f"declared group '{group}' gets no gradient in {m['steps']} steps", ("dead_groups",)))
        norms = m.get("group_grad_norms") or {}
        for group in m.get("starved_groups") or []:
            top = max(norms, key=lambda g: norms[g] or 0)
            found.append(Finding("warn", "starved", f"declared group '{group}' is starved: median gradient norm {norms[group]:.2g}, "
                                 f"{norms[group] / norms[top]:.2g}× that of '{top}' ({norms[top]:.2g})",
                                 ("starved_groups", "group_grad_norms")))
        if m["dead_param_count"] > o["max_dead_params"]:
            why = " (never reached by backward: a `.detach()` or an unused branch?)" if m["never_in_graph"] else ""
            found.append(Finding("fail", "dead", f"{m['dead_param_count']} parameters never received a nonzero gradient in "
                                 f"{m['steps']} steps, in modules {', '.join(f'`{x}`' for x in m['dead_modules'][:4])}{why}",
                                 ("dead_param_count", "dead_modules")))
        u = m["update_ratio_median"]
        if u is not None:
            # Updates too large for a post-LN stack are what warmup or pre-LN cure (Xiong et al. 2020); the
            # runner drops pre-ln where no post-LN block exists.
            said, kind = f"median update/weight ratio {u:.2g} (healthy ≈ 1e-3)", "update-" + ("low" if u < 1e-3 else "high")
            fixes = ("warmup-cosine", "pre-ln") if kind == "update-high" else ()
            if not o["update_ratio_fail_below"] <= u <= o["update_ratio_fail_above"]:
                found.append(Finding("fail", kind, f"{said}: learning rate far too {kind[7:]}", ("update_ratio_median",), fixes))
            elif not o["update_ratio_warn_below"] <= u <= o["update_ratio_warn_above"]:
                found.append(Finding("warn", kind, f"{said}: learning rate probably too {kind[7:]}", ("update_ratio_median",), fixes))
        return found or [Finding(
            "pass", "healthy", f"gradients healthy over {m['steps']} steps: median global norm {_num(m['global_norm_median'])}, "
            f"first/last rate {_num(m['grad_rate'])}, update ratio {_num(m['update_ratio_median'])}",
            ("global_norm_median", "grad_rate", "update_ratio_median"))]

def _num(value) -> str:
    return "n/a" if value is None else format(value, ".3g")
