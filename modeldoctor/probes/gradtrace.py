"""Gradient tracing for `train`: per-parameter gradient norms, actual update ratios, non-finite probes.

`GradTracer` is a TrainMonitor. Each step it records, as tensors (converted once, in `result`):
- the L2 norm of every trainable parameter's raw gradient (before clipping), one `_foreach_norm`;
- for ≥2-D weights, ‖w_after − w_before‖ and ‖w_before‖ (actual Δw, right for Adam), from one
  persistent copy of those weights updated in place with `_foreach_` ops;
- the loss, and one finiteness test per step (the only host sync it adds).
At the first non-finite loss or gradient it calls `on_nonfinite(step)` and stops the run.

`locate_nonfinite` re-runs one forward/backward with hooks borrowed for the duration (removed in
`finally`) and names the first module where a NaN/Inf appears. `summarize` and `group_summary`
turn a `GradTrace` into the metrics and module table of the grad-norms check.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..core.subject import Batch, LossFn
from .training import StopTraining, TrainMonitor

ROOT = "(model)"  # how the root module is named in findings


def owner(param_name: str) -> str:
    """Module that owns a parameter: `encoder.layers.0.linear1.weight` -> `encoder.layers.0.linear1`."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else ROOT


def in_group(param_name: str, prefixes: Iterable[str]) -> bool:
    return any(param_name == p or param_name.startswith(p + ".") for p in prefixes)


def spearman(values: np.ndarray) -> float:
    """Spearman rank correlation of `values` (1-D) with their index; NaN for fewer than 3 values."""
    if len(values) < 3 or np.ptp(values) == 0:
        return float("nan")
    from scipy import stats  # imported late: scipy.stats costs ~0.6 s at start-up

    return float(stats.spearmanr(values, np.arange(len(values))).statistic)


class RecordingBatches:
    """Re-iterable view of `batches` that remembers the batch it handed out last."""

    def __init__(self, batches: Iterable[Batch]):
        self.batches, self.last = batches, None

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.batches:
            self.last = batch
            yield batch


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(N,) float32 L2 norms of `tensors`: one `_foreach_norm` (per-tensor only for sparse grads)."""
    try:
        return torch.stack(torch._foreach_norm(tensors)).float()
    except RuntimeError:  # sparse gradients (nn.Embedding(sparse=True)) or mixed devices/dtypes
        return torch.stack([torch.linalg.vector_norm(t.coalesce().values() if t.is_sparse else t).float().cpu()
                            for t in tensors])


@dataclass
class GradTrace:
    """What a traced run recorded, as plain arrays. K steps, P traced parameters, W ≥2-D weights."""

    names: list[str]  # (P,) trainable parameter names
    weight_names: list[str]  # (W,) the ≥2-D ones
    norms: np.ndarray  # (K, P) gradient L2 norm; 0 where the grad was None
    deltas: np.ndarray  # (K', W) ‖w_after − w_before‖ at each of `update_steps`
    weight_norms: np.ndarray  # (K', W) ‖w_before‖
    losses: list[float]
    had_grad: list[bool]  # (P,) grad was not None at least once
    update_steps: list[int] = field(default_factory=list)  # (K',) the steps deltas were measured at
    nonfinite: dict | None = None  # {"step", "loss", ...locate_nonfinite fields}
    modules: list[str] = field(init=False)

    def __post_init__(self):
        self.modules = list(dict.fromkeys(owner(n) for n in self.names))

    def combine(self, norms: np.ndarray, names: list[str], key: Callable[[str], str | None]) -> dict[str, np.ndarray]:
        """Root-sum-square of columns sharing key(name) -> {key: (K,)}; names with key None are left out."""
        out: dict[str, np.ndarray] = {}
        for column, name in enumerate(names):
            k = key(name)
            if k is not None:
                out[k] = out.get(k, 0.0) + norms[:, column] ** 2
        return {k: np.sqrt(v) for k, v in out.items()}

    def module_norms(self) -> dict[str, np.ndarray]:
        return self.combine(self.norms, self.names, owner)

    def global_norms(self) -> np.ndarray:
        return np.sqrt((self.norms ** 2).sum(axis=1)) if self.norms.size else np.zeros(len(self.norms))

    def update_ratios(self) -> np.ndarray:
        """(K', W) ‖Δw‖/‖w_before‖; NaN where ‖w_before‖ = 0."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.weight_norms > 0, self.deltas / self.weight_norms, np.nan)

    def dead(self) -> list[str]:
        """Parameters whose gradient was None or exactly zero at every traced step."""
        return [n for n, column in zip(self.names, self.norms.T) if not np.any(column != 0)]


class GradTracer(TrainMonitor):
    """Records raw gradient norms and actual update ratios for every trainable parameter of `model`.

    update_every: measure the update ratio on every n-th step (1: every step; 0: never, which also
    skips the copy of the ≥2-D weights it needs). Each measured step costs one copy, one subtraction
    and two norms over those weights; the gradient norms cost one norm over the gradients per step.
    """

    def __init__(self, model: nn.Module, *, on_nonfinite: Callable[[int], dict] | None = None, update_every: int = 1):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.weight_names = [n for n, p in named if p.ndim >= 2]
        # Detached aliases share storage with the parameters, so the optimizer's in-place updates
        # show through and the foreach ops below never touch autograd.
        self.weights = [p.detach() for _, p in named if p.ndim >= 2] if update_every > 0 else []
        self.on_nonfinite, self.update_every = on_nonfinite, update_every
        self.had_grad = [False] * len(self.params)
        self._all_had_grad = False
        self._norms: list[torch.Tensor] = []  # per step (P,)
        self._deltas: list[torch.Tensor] = []  # per step (W,)
        self._wnorms: list[torch.Tensor] = []  # per step (W,)
        self._losses: list[torch.Tensor] = []  # per step ()
        self._update_steps: list[int] = []
        self._before: list[torch.Tensor] | None = None  # persistent buffers for the ≥2-D weights
        self._measuring = False
        self.nonfinite: dict | None = None

    def after_backward(self, step: int, loss: torch.Tensor, model: nn.Module) -> bool:
        grads = [p.grad for p in self.params]
        self._measuring = bool(self.weights) and step % self.update_every == 0
        wnorms = None
        if all(g is not None for g in grads):
            if not self._all_had_grad:
                self.had_grad, self._all_had_grad = [True] * len(grads), True
            if self._measuring:  # one launch for the gradient norms and ‖w_before‖
                norms = _norms(grads + self.weights)
                norms, wnorms = norms[: len(grads)], norms[len(grads):]
            else:
                norms = _norms(grads) if grads else torch.zeros(0)
        else:
            present = [i for i, g in enumerate(grads) if g is not None]
            norms = torch.zeros(len(grads), device=self.params[0].device)
            if present:
                norms[present] = _norms([grads[i] for i in present]).to(norms.device)
            for i in present:
                self.had_grad[i] = True
        loss = loss.detach()
        self._norms.append(norms)
        self._losses.append(loss)
        value = float(loss.sum())  # `train` reads the loss too; on a GPU this and the next are the syncs
        if not (math.isfinite(value) and math.isfinite(float(norms.sum()))):
            self.nonfinite = {"step": step, "loss": value}
            if self.on_nonfinite is not None:
                self.nonfinite.update(self.on_nonfinite(step))
            raise StopTraining
        if self._measuring:
            if self._before is None:
                self._before = [w.clone() for w in self.weights]
            else:
                torch._foreach_copy_(self._before, self.weights)  # before := w_before
            self._wnorms.append(_norms(self.weights) if wnorms is None else wnorms)
        return True

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not self._measuring:
            return
        torch._foreach_sub_(self._before, self.weights)  # before := w_before − w_after
        self._deltas.append(_norms(self._before))
        self._update_steps.append(step)
        self._measuring = False

    def result(self) -> GradTrace:
        """Everything recorded so far, converted to numpy once."""
        def stack(rows: list[torch.Tensor], width: int) -> np.ndarray:
            return torch.stack(rows).double().cpu().numpy() if rows else np.zeros((0, width))

        losses = torch.stack([x.float().sum() for x in self._losses]).tolist() if self._losses else []
        return GradTrace(
            names=list(self.names), weight_names=list(self.weight_names),
            norms=stack(self._norms, len(self.names)), deltas=stack(self._deltas, len(self.weight_names)),
            weight_norms=stack(self._wnorms[: len(self._deltas)], len(self.weight_names)),
            losses=losses, had_grad=list(self.had_grad), update_steps=list(self._update_steps), nonfinite=self.nonfinite,
        )


# ----------------------------------------------------------------------------- summaries

def median_finite(values) -> float | None:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def summarize(trace: GradTrace) -> tuple[dict, list[list]]:
    """Metrics and the ranked module table from a trace; statistics use the finite steps only."""
    ok = np.isfinite(trace.norms).all(axis=1) & np.isfinite(trace.losses)  # (K,)
    norms, losses, total = trace.norms[ok], np.asarray(trace.losses)[ok], trace.global_norms()[ok]
    window = max(1, len(total) // 5)
    positive = total[total > 0]
    first_w, last_w = (trace.weight_names[0], trace.weight_names[-1]) if len(trace.weight_names) > 1 else (None, None)
    g_first = median_finite(norms[:, trace.names.index(first_w)]) if first_w and len(norms) else None
    g_last = median_finite(norms[:, trace.names.index(last_w)]) if last_w and len(norms) else None
    start, end = (float(np.mean(losses[:window])), float(np.mean(losses[-window:]))) if len(losses) else (None, None)
    ratios = trace.update_ratios()  # (K', W)
    per_weight = [median_finite(col) for col in ratios.T]
    dead = trace.dead()
    modules = {k: v[ok] for k, v in trace.module_norms().items()}
    module_ratio = module_update_ratios(trace)
    table = sorted(([name, median_finite(v), float(v.max()) if len(v) else None, module_ratio.get(name), int((v == 0).sum())]
                    for name, v in modules.items()), key=lambda row: -(row[1] or 0))
    bad = trace.nonfinite or {}
    return {
        "steps": len(trace.losses),
        "global_norm_median": median_finite(total), "global_norm_max": float(total.max()) if len(total) else None,
        "norm_growth": float(np.median(positive[-window:]) / np.median(positive[:window])) if len(positive) > 1 else None,
        "norm_growth_rho": spearman(np.log(positive)) if len(positive) > 2 else None,
        "first_layer": first_w and owner(first_w), "last_layer": last_w and owner(last_w),
        "first_layer_grad_norm": g_first,
        "grad_rate": g_first / g_last if g_first is not None and g_last else None,
        "initial_loss": start, "final_loss": end,
        "loss_drop": (start - end) / abs(start) if start else None,
        "update_ratio_median": median_finite([r for r in per_weight if r is not None]),
        "dead_param_count": len(dead), "dead_params": dead[:10],
        "dead_modules": list(dict.fromkeys(owner(n) for n in dead))[:10],
        "never_in_graph": sum(1 for n, had in zip(trace.names, trace.had_grad) if not had),
        "largest_grad_module": table[0][0] if table else None,
        "smallest_grad_module": table[-1][0] if table else None,
        "nonfinite_step": bad.get("step"),
        "nonfinite_in": None if not bad else "loss" if not np.isfinite(bad.get("loss", 0.0)) else "gradient",
        "nonfinite_module": bad.get("module"), "nonfinite_stage": bad.get("stage"),
        "nonfinite_where": bad.get("detail"),
    }, table


def module_update_ratios(trace: GradTrace) -> dict[str, float | None]:
    """Median over steps of ‖Δw‖/‖w‖ per module (its ≥2-D weights together)."""
    deltas = trace.combine(trace.deltas, trace.weight_names, owner)
    weights = trace.combine(trace.weight_norms, trace.weight_names, owner)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {k: median_finite(deltas[k] / weights[k]) for k in deltas}


def group_summary(trace: GradTrace, groups: dict[str, list[str]], all_names: list[str], starved_ratio: float = 1e-3) -> dict:
    """Per declared group: median gradient norm and update ratio; frozen, dead, starved and empty groups.

    A trainable group is starved when its median gradient norm is below `starved_ratio` × the largest
    group median (dead groups, which get no gradient at all, are listed as dead only).
    """
    ok = np.isfinite(trace.norms).all(axis=1)
    dead, norms, ratios, frozen, dead_groups, empty = set(trace.dead()), {}, {}, [], [], []
    for group, prefixes in groups.items():
        members = [n for n in trace.names if in_group(n, prefixes)]
        if not members:
            (frozen if any(in_group(n, prefixes) for n in all_names) else empty).append(group)
            continue
        key = (lambda n, p=prefixes: "g" if in_group(n, p) else None)
        norms[group] = median_finite(trace.combine(trace.norms[ok], trace.names, key).get("g", []))
        delta = trace.combine(trace.deltas, trace.weight_names, key).get("g")
        weight = trace.combine(trace.weight_norms, trace.weight_names, key).get("g")
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[group] = median_finite(delta / weight) if delta is not None else None
        if all(n in dead for n in members):
            dead_groups.append(group)
    largest = max((v for v in norms.values() if v is not None), default=None)
    starved = [g for g, v in norms.items() if largest and g not in dead_groups and v is not None and v < starved_ratio * largest]
    return {"group_grad_norms": norms, "group_update_ratios": ratios, "frozen_groups": frozen,
            "dead_groups": dead_groups, "starved_groups": starved, "empty_groups": empty}


# ----------------------------------------------------------------------------- non-finite probes

def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Tensors inside a module's inputs or outputs (tensors, tuples, lists, dicts)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _finite(value: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _tensors(value) if t.is_floating_point() or t.is_complex())


@contextlib.contextmanager
def nonfinite_probes(model: nn.Module) -> Iterator[tuple[list, list]]:
    """Forward hooks on every module, and gradient hooks on their non-leaf inputs/outputs.

    Yields (forward, backward) event lists: forward (module, inputs finite, output finite) in
    completion order; backward (module, "input"|"output", gradient finite) in backward order.
    Every hook is removed on exit, whatever happens.
    """
    forward: list[tuple[str, bool, bool]] = []
    backward: list[tuple[str, str, bool]] = []
    handles: list[Any] = []

    def on_grad(name: str, kind: str, grad: torch.Tensor) -> None:
        backward.append((name, kind, bool(torch.isfinite(grad).all())))

    def on_forward(name: str, module: nn.Module, inputs: Any, output: Any) -> None:
        forward.append((name, _finite(inputs), _finite(output)))
        for kind, value in (("output", output), ("input", inputs)):
            for t in _tensors(value):
                if t.requires_grad and t.grad_fn is not None:  # never hook a leaf (a Parameter would keep it)
                    handles.append(t.register_hook(partial(on_grad, name, kind)))

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_hook(partial(on_forward, name or ROOT)))
        yield forward, backward
    finally:
        for handle in handles:
            handle.remove()


def locate_nonfinite(model: nn.Module, loss_fn: LossFn, batch: Batch) -> dict:
    """Re-run forward and backward on `batch` and say where the first NaN/Inf appears.

    Returns {"stage": "forward"|"input"|"loss"|"backward"|"not reproduced", "module": name or None,
    "detail": one line}. Leaves the model's gradients zeroed (set to None).
    """
    model.zero_grad(set_to_none=True)
    try:
        with nonfinite_probes(model) as (forward, backward):
            loss = loss_fn(model, batch)
            loss_finite = _finite(loss)
            if loss.requires_grad:
                loss.backward()
        for name, inputs_ok, output_ok in forward:
            if not output_ok:
                if not inputs_ok:
                    return {"stage": "input", "module": name,
                            "detail": f"reaches `{name}` through its input (the data, or code outside any module)"}
                return {"stage": "forward", "module": name, "detail": f"produced in the forward of `{name}`"}
        if not loss_finite:
            return {"stage": "loss", "module": None, "detail": "every module output is finite: the loss function itself produces it"}
        # Backward order: the first module whose backward turns a finite output gradient into a
        # non-finite input (or parameter) gradient produced it.
        output_ok: dict[str, bool] = {}
        for name, kind, ok in backward:
            if kind == "output":
                output_ok[name] = output_ok.get(name, True) and ok
                if not ok and name == ROOT:
                    return {"stage": "backward", "module": None, "detail": "the loss's backward gives a non-finite gradient"}
            elif not ok and output_ok.get(name, True):
                return {"stage": "backward", "module": name, "detail": f"produced in the backward of `{name}`"}
        bad = [owner(n) for n, p in reversed(list(model.named_parameters())) if p.grad is not None and not _finite(p.grad)]
        for name in bad:
            if output_ok.get(name, True):
                return {"stage": "backward", "module": name, "detail": f"non-finite parameter gradient in `{name}`"}
        first = next(((name, kind) for name, kind, ok in backward if not ok), None)
        if first or bad:
            name = first[0] if first else bad[0]
            return {"stage": "backward", "module": name, "detail": f"first non-finite gradient in backward order at `{name}`"}
        return {"stage": "not reproduced", "module": None, "detail": "a re-run of the same batch stayed finite (randomness?)"}
    finally:
        model.zero_grad(set_to_none=True)
