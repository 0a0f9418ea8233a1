"""optimizer-state: what the optimizer state saved with a checkpoint says about how the weights were trained."""
from __future__ import annotations

import re
from dataclasses import replace
from statistics import median

import torch

from ..core.check import Check, CheckContext
from ..core.evidence import Weights
from ..core.registry import register_check
from ..core.results import Finding, Measurement
from ..probes.optimizer_map import optimizer_kind, optimizer_map, param_order, states
from ..probes.weight_layout import split_name

NO_OPTIMIZER = "the checkpoint holds no optimizer state; save optimizer.state_dict() beside the model to enable it"
# Leaves that are parameters in the usual modules: an uncovered one fails, any other leaf (maybe a buffer) warns.
PARAM_LEAF = re.compile(r"(^|_)(weight|bias)(_|$)|^(weight|bias)_(ih|hh)_l\d+|^original\d+$|^(gamma|beta|scale)$")
ZERO_KEYS = ("exp_avg_sq", "square_avg", "exp_inf", "sum", "momentum_buffer")  # the first one present is judged
LISTED = 20  # names kept per list in the metrics
ADVICE = {
    "uncovered": "build the optimizer after the model is final and over model.parameters() (or add the missing "
                 "group); if these tensors are frozen on purpose, name their prefixes in option `frozen`",
    "no-state": "the parameter never got a gradient: check it is used in forward and not detached (and rebuild the "
                "optimizer if its module was replaced after the optimizer was built); if it is frozen on purpose "
                "(requires_grad=False), name its prefix in option `frozen`",
    "zero-gradient": "the parameter's gradient was always exactly 0: it reaches the loss only through a zero factor "
                     "(0 * p, an all-zero mask, a dead path), or its .grad is zeroed between backward and step",
    "step-lag": "these parameters were updated on few of the steps: a conditional branch or an expert that is "
                "rarely used (see expert-balance); intended for optional paths, a problem for the main path",
    "lr-zero": "give the group a positive lr (and check the scheduler's start value): at lr 0 it never moves",
    "static-schedule": "check that scheduler.step() is called where intended (per batch or per epoch) and that "
                       "step_size / milestones fall inside the run",
    "orphans": "the optimizer was built for other tensors (another model, or before a layer was resized): rebuild it",
}


def as_float(value) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def static_schedule(state: dict) -> bool:
    """Whether a scheduler's LR is where it started with nothing in its state to say it moved meanwhile."""
    if "_schedulers" in state:
        return all(static_schedule(inner) for inner in state["_schedulers"])
    base, last = state.get("base_lrs"), state.get("_last_lr")
    if not base or not last or any(key in state for key in ("T_max", "T_0", "total_size", "max_lrs")):
        return False  # ReduceLROnPlateau (no base_lrs) and cyclic schedules come back to their start
    if any(state.get(key, 1.0) != 1.0 for key in ("start_factor", "factor")) and \
            state["last_epoch"] >= state.get("total_iters", 0):
        return False  # a finished warmup
    return all(abs(as_float(a) - as_float(b)) <= 1e-12 * max(abs(as_float(b)), 1e-30) for a, b in zip(last, base))


@register_check
class OptimizerState(Check):
    """Optimizer state: which tensors the saved optimizer trained, whether each got gradients, and its LRs.

    What it checks
    Reads the optimizer `state_dict()` saved beside the weights (and the LR scheduler's) and maps
    its numbered params to checkpoint tensors: surely when the groups carry `param_names`
    (torch >= 2.6, optimizer built from `named_parameters()`), otherwise inferred by aligning the
    params' shapes (from their state tensors) with the checkpoint's non-buffer floating tensors in
    order (`probes.optimizer_map`; an inferred mapping says so, and lists the candidates where it is
    ambiguous). Then: tensors in no param group; params without state (stateful optimizers create
    it at the first step the param has a gradient; plain SGD without momentum keeps none by design);
    a second moment (exp_avg_sq, square_avg, ...) or momentum buffer exactly 0 (only zero gradients);
    per-param step counts far below the largest; groups whose lr is 0 and whether a schedule brought
    it there; a scheduler whose LR never moved, or that was never stepped.

    Why it matters
    An optimizer built over `model.head.parameters()`, or before the embeddings were resized,
    trains part of the model and raises no error; a parameter that is not used in forward, is
    detached, or only meets the loss through a zero factor never moves. The optimizer's own state
    records all of this, with no model class or data needed.

    Evidence
    Metrics: optimizer class guess, counts (params, with state, tensors, covered, uncovered),
    the mapping and its certainty, step statistics, lr per group and scheduler state; the findings
    name the tensors in `where`.

    Fixes
    None on the weights: the remedies are in training (advice): build the optimizer after the
    model is final over model.parameters(), make sure each parameter is used and not detached,
    give every group a positive lr, step the scheduler where intended.

    Options
    lag_fraction (0.5): warn when a param's step count is below this fraction of the largest.
    min_steps (10): judge step lag and the scheduler only after this many steps.
    frozen (()): name prefixes of tensors frozen on purpose (not reported as uncovered or without gradient).
    """

    slug = "optimizer-state"
    code = "MD014"
    title = "Optimizer state forensics"
    needs = "weights"
    default_options = {"lag_fraction": 0.5, "min_steps": 10, "frozen": ()}

    def requires(self, weights: Weights) -> str | None:
        return None if weights.optimizer is not None else NO_OPTIMIZER

    def measure(self, weights: Weights, ctx: CheckContext) -> Measurement:
        o, opt, sched = self.options, weights.optimizer, weights.scheduler
        groups, order, state, kind = opt["param_groups"], param_order(opt), states(opt), optimizer_kind(opt)
        pmap = optimizer_map(weights)
        where = [pmap.options[i] or [f"optimizer.param_groups[{g}].params[{k}]"] for i, (g, k) in enumerate(order)]
        by_design = [kind == "LBFGS" or (kind == "SGD" and not groups[g].get("momentum")) for g, _ in order]
        if kind == "unknown" and not state:
            by_design = [True] * len(order)
        frozen = (o["frozen"],) if isinstance(o["frozen"], str) else tuple(o["frozen"])
        is_frozen = lambda names: bool(names) and all(n.startswith(frozen) for n in names)  # noqa: E731
        no_state, zero, steps = [], [], {}
        for i, (_, k) in enumerate(order):
            entry = state.get(k) or {}
            if by_design[i]:
                continue
            if not entry or ("step" in entry and as_float(entry["step"]) == 0):
                no_state += [] if is_frozen(pmap.options[i]) else [i]
                continue
            if "step" in entry:
                steps[i] = as_float(entry["step"])
            key = next((key for key in ZERO_KEYS if isinstance(entry.get(key), torch.Tensor)), None)
            if key is not None and not torch.count_nonzero(entry[key]):
                zero.append((i, key))
        top = max(steps.values(), default=0.0)
        lagging = sorted((i for i, s in steps.items() if top >= o["min_steps"] and s < o["lag_fraction"] * top
                          and i not in pmap.orphans),
                         key=steps.get)
        sure = [n for n in pmap.uncovered if not n.startswith(frozen)]
        maybe = [n for n in pmap.maybe_uncovered if not n.startswith(frozen)]
        missing = 0 if pmap.missing is None else max(0, pmap.missing - (len(pmap.uncovered) - len(sure)))
        base = (sched or {}).get("base_lrs") or []
        lrs, starts = [as_float(g["lr"]) for g in groups], []
        for g, group in enumerate(groups):
            start = group.get("initial_lr", base[g] if g < len(base) else None)
            starts.append(None if start is None else as_float(start))
        names = lambda idx: list(dict.fromkeys(n for i in idx for n in where[i]))[:LISTED]  # noqa: E731
        in_group = [[i for i, (g, _) in enumerate(order) if g == gi] for gi in range(len(groups))]
        zero_lr = [{"group": g, "lr": lr, "start": starts[g], "where": names(in_group[g])} for g, lr in enumerate(lrs)
                   if in_group[g] and (lr == 0 or (starts[g] or 0) > 0 and lr <= 1e-9 * starts[g])]
        metrics = {
            "optimizer": kind, "param_groups": len(groups), "params": len(order), "params_with_state": len(order) - sum(by_design) - len(no_state),
            "stateless_by_design": sum(by_design), "tensors": len(pmap.candidates), "covered": len(pmap.covered), "frozen": len(pmap.uncovered) - len(sure),
            "uncovered_count": missing, "mapping": pmap.how, "mapping_sure": pmap.how == "param_names",
            "ambiguous_params": sum(len(x) > 1 for x in pmap.options), "orphans": names(pmap.orphans),
            "uncovered": sure[:LISTED], "maybe_uncovered": maybe[:LISTED], "tied": [f"{a} = {b}" for a, b in pmap.tied.items()],
            "uncovered_param_like": any(PARAM_LEAF.search(split_name(n)[1]) for n in sure + maybe),
            "no_state_count": len(no_state), "no_state": names(no_state),
            "zero_moment_count": len(zero), "zero_moment": names(i for i, _ in zero), "zero_moment_keys": sorted({k for _, k in zero}),
            "max_step": top if steps else None, "min_step": min(steps.values(), default=None),
            "median_step": median(steps.values()) if steps else None,
            "lagging_count": len(lagging), "lagging": [{"where": where[i], "step": steps[i]} for i in lagging[:LISTED]],
            "lrs": lrs, "start_lrs": starts, "trained": names(range(len(order))), "zero_lr_groups": zero_lr, "scheduler": None,
        }
        if sched is not None:
            metrics["scheduler"] = {"last_epoch": sched.get("last_epoch"), "base_lrs": [as_float(x) for x in base],
                                    "last_lr": [as_float(x) for x in sched.get("_last_lr") or []],
                                    "static": static_schedule(sched), "step_size": sched.get("step_size")}
        notes = [pmap.note] if pmap.note else []
        if pmap.how not in ("param_names", "none"):
            notes.append(f"the tensor names of the optimizer's params are inferred ({pmap.how}) from shapes and order: a "
                         "state dict does not say which tensors are buffers; build the optimizer from named_parameters() "
                         "(torch >= 2.6) to make it sure")
        return Measurement(metrics=metrics, notes=notes)

    def judge(self, measurement: Measurement) -> list[Finding]:
        m, o = measurement.metrics, self.options
        found: list[Finding] = []
        add = lambda status, kind, text, keys, where: found.append(  # noqa: E731
            Finding(status, kind, text, keys, advice=[ADVICE[kind]], where=where))
        if m["orphans"]:
            add("warn", "orphans", f"{len(m['orphans'])} optimizer param(s) have shapes no checkpoint tensor has",
                ("orphans",), m["orphans"])
        if m["uncovered_count"]:
            status = "fail" if m["uncovered_param_like"] else "warn"
            listed = ", ".join(m["uncovered"][:8])
            if len(m["uncovered"]) >= m["uncovered_count"]:
                text = f"{m['uncovered_count']} of {m['tensors']} trainable tensors are in no param group: {listed}"
            else:
                text = (f"{m['uncovered_count']} of {m['tensors']} trainable tensors are in no param group"
                        + (f" ({listed} surely)" if listed else "") + f"; which {'others' if listed else 'ones'} cannot be "
                        f"told (inferred mapping, same-shaped tensors), candidates: {', '.join(m['maybe_uncovered'][:8])}")
            add(status, "uncovered", text + ("" if status == "fail" else " (maybe buffers: a state dict does not say)"),
                ("uncovered_count", "uncovered", "maybe_uncovered", "mapping"), m["uncovered"] + m["maybe_uncovered"])
        if m["no_state_count"]:
            text = ("the optimizer never took a step: no param has state" if m["no_state_count"] == m["params"]
                    - m["stateless_by_design"] else f"{m['no_state_count']} of {m['params']} optimizer params have no "
                    f"state (never received a gradient): {', '.join(m['no_state'][:8])}")
            add("fail", "no-state", text, ("no_state_count", "no_state", "mapping"), m["no_state"])
        if m["zero_moment_count"]:
            add("fail", "zero-gradient", f"{m['zero_moment_count']} param(s) got only zero gradients "
                f"({'/'.join(m['zero_moment_keys'])} exactly 0): {', '.join(m['zero_moment'][:8])}",
                ("zero_moment_count", "zero_moment"), m["zero_moment"])
        if m["lagging_count"]:
            worst = m["lagging"][0]
            add("warn", "step-lag", f"{m['lagging_count']} param(s) took fewer than {o['lag_fraction']:g} of the "
                f"{m['max_step']:g} steps, fewest {worst['step']:g} ({', '.join(worst['where'][:3])})",
                ("lagging_count", "lagging", "max_step"), [n for e in m["lagging"] for n in e["where"]])
        notes = []
        for group in m["zero_lr_groups"]:
            if (group["start"] or 0) > 0:
                notes.append(f"param group {group['group']} ended at lr {group['lr']:g}, brought there by the schedule "
                             f"from {group['start']:g} (a finished schedule)")
            else:
                add("fail", "lr-zero", f"param group {group['group']} has lr 0 from the start"
                    + (" (initial_lr 0)" if group["start"] == 0 else " (no schedule)") + ": it never trained",
                    ("zero_lr_groups", "lrs", "start_lrs"), group["where"])
        sched, top = m["scheduler"], m["max_step"] or 0
        if sched and sched["last_epoch"] is not None:
            if sched["last_epoch"] >= o["min_steps"] and sched["static"]:
                size = f" (step_size {sched['step_size']} > {sched['last_epoch']} steps)" if sched["step_size"] else ""
                add("warn", "static-schedule", f"the LR scheduler never moved the LR in {sched['last_epoch']} steps{size}",
                    ("scheduler",), m["trained"])
            elif sched["last_epoch"] == 0 and top >= o["min_steps"]:
                add("warn", "static-schedule", f"the LR scheduler was never stepped (last_epoch 0 after {top:g} "
                    "optimizer steps)", ("scheduler", "max_step"), m["trained"])
        if m["stateless_by_design"] and m["optimizer"] == "SGD":
            notes.append(f"{m['stateless_by_design']} param(s) are under SGD without momentum, which keeps no state: "
                         "whether they got gradients cannot be told")
        if found:
            return [replace(found[0], advice=found[0].advice + tuple(notes)), *found[1:]]
        steps = f", {m['max_step']:g} steps" if m["max_step"] else ""
        got = ("none keeps per-param state" if m["stateless_by_design"] == m["params"] else
               f"{m['params_with_state']} with gradients" + (f", {m['stateless_by_design']} stateless by design"
                                                             if m["stateless_by_design"] else ""))
        how = "by param_names" if m["mapping_sure"] else f"inferred: {m['mapping']}"
        frozen = f" (and {m['frozen']} frozen)" if m["frozen"] else ""
        covers = (f"covering all {m['tensors'] - m['frozen']} trainable tensors{frozen} (mapping {how})"
                  if m["mapping"] != "none" else f"not mapped to the {m['tensors']} tensors")
        return [Finding("pass", "healthy", f"{m['optimizer']}: {m['params']} params in {m['param_groups']} group(s), "
                        f"{got}, {covers}{steps}, lr {', '.join(f'{lr:g}' for lr in m['lrs'])}",
                        ("params", "params_with_state", "covered", "tensors", "mapping", "lrs"), advice=notes)]
