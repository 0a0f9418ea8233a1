"""Mixture-of-experts routers: find them in any model, capture their decisions, score the balance.

A router is a module that emits one logit per expert (the gate) next to a collection of E experts.
A subject may declare its routers (capability "routers"); otherwise `find_routers` detects them
from the module structure, without relying on attribute names:

1. expert collections: an `nn.ModuleList`/`nn.ModuleDict` of E ≥ 2 children of one class with
   identical parameter shapes;
2. the gate: a module under the same parent, outside the collection, that runs before the experts
   in a probe forward and returns a tensor whose last dimension is E (the outermost such module).

A stack of identical layers (`TransformerEncoder.layers`) has no such gate, so it is not an MoE.

Capability "routers" (optional): a list of dicts {"gate": qualified name, "experts": qualified name
or None, "num_experts": E (read from the collection if omitted), "top_k": k (optional)}.

`RoutingCapture` records, per router and per forward, the gate logits (N, E) and how many tokens
each expert received (counted by pre-hooks on the experts). From these come the loads: the real
dispatch when experts see subsets of the tokens, else the top-k of the logits (k declared, or 1).
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..core.subject import Batch, Subject
from .numerics import entropy

DEAD_LOAD = 0.01  # an expert is dead when its load is below this share of the fair load 1/E


@dataclass(frozen=True)
class Router:
    """One MoE layer: its gate module, its expert collection and its expert count."""

    gate: str
    experts: str | None
    num_experts: int
    top_k: int | None = None

    @property
    def layer(self) -> str:
        """A name for the layer: the module holding gate and experts (the gate's parent)."""
        return self.gate.rpartition(".")[0] or self.gate


def _same_shape_children(container: nn.Module) -> bool:
    children = list(container.children())
    if len(children) < 2 or len({type(c) for c in children}) > 1:
        return False
    shapes = [tuple(tuple(p.shape) for p in c.parameters()) for c in children]
    return bool(shapes[0]) and all(s == shapes[0] for s in shapes)


def expert_collections(model: nn.Module) -> dict[str, int]:
    """Qualified name -> E of every ModuleList/ModuleDict of ≥2 structurally identical modules."""
    return {name: len(list(module.children())) for name, module in model.named_modules()
            if isinstance(module, (nn.ModuleList, nn.ModuleDict)) and _same_shape_children(module)}


def _last_dim(output: Any) -> int | None:
    if isinstance(output, torch.Tensor) and output.dim() >= 1 and output.is_floating_point():
        return output.shape[-1]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return _last_dim(output[0])  # gates that return (logits, ...) tuples
    return None


def find_routers(model: nn.Module, batch: Batch, forward) -> list[Router]:
    """Routers detected by structure and one probe forward (`forward(model, batch)`), in model order."""
    collections = expert_collections(model)
    if not collections:
        return []
    modules = dict(model.named_modules())
    candidates: dict[str, list[str]] = {}  # collection -> modules that could be its gate
    for collection in collections:
        parent = collection.rpartition(".")[0]
        candidates[collection] = [
            name for name in modules
            if name and (not parent or name.startswith(parent + ".")) and name != collection
            and not name.startswith(collection + ".")  # an expert is not a gate
            and not collection.startswith(name + ".")  # nor is a module that holds the experts
        ]
    order: list[str] = []  # modules in order of completed forward, gates and experts alike
    outputs: dict[str, int | None] = {}

    def on_output(name):
        def hook(_module, _inputs, output):
            outputs.setdefault(name, _last_dim(output))
            order.append(name)
        return hook

    watched = {name for names in candidates.values() for name in names}
    watched |= {f"{c}.{child}" for c in collections for child, _ in modules[c].named_children()}
    with contextlib.ExitStack() as stack:
        for name in watched:
            stack.callback(modules[name].register_forward_hook(on_output(name)).remove)
        with torch.no_grad():
            forward(model, batch)
    routers = []
    for collection, num in collections.items():
        experts = [f"{collection}.{child}" for child, _ in modules[collection].named_children()]
        first_expert = min((order.index(e) for e in experts if e in order), default=None)
        gates = [name for name in candidates[collection] if outputs.get(name) == num and name in order
                 and (first_expert is None or order.index(name) < first_expert)]
        if gates:
            outermost = min(gates, key=lambda n: n.count("."))
            routers.append(Router(gate=outermost, experts=collection, num_experts=num))
    return routers


NO_ROUTERS = ("no mixture-of-experts router found: declare capability `routers`, or keep experts in an "
              "nn.ModuleList next to a gate that emits one logit per expert")


def declared_routers(subject: Subject) -> list[Router] | None:
    specs = subject.capabilities.routers
    if specs is None:
        return None
    modules = dict(subject.model.named_modules())
    routers = []
    for spec in specs:  # RouterSpec (core.capabilities)
        num = spec.num_experts or (len(list(modules[spec.experts].children())) if spec.experts else None)
        if num is None:
            raise ValueError(f"router {spec.gate!r}: declare num_experts or experts")
        routers.append(Router(spec.gate, spec.experts, int(num), spec.top_k))
    return routers


def subject_routers(subject: Subject, model: nn.Module | None = None) -> list[Router]:
    """The subject's declared routers, else those detected on one evaluation batch."""
    declared = declared_routers(subject)
    if declared is not None:
        return declared
    model = subject.model if model is None else model
    batch = next(iter(subject.eval_batches), None)
    if batch is None:
        return []
    was_training = model.training
    model.eval()
    try:
        return find_routers(model, batch, subject.predict)
    finally:
        model.train(was_training)


@dataclass
class RouterRecord:
    """What one router did over the captured forwards."""

    router: Router
    logits: list[torch.Tensor] = field(default_factory=list)  # each (N, E), grad kept if it had one
    dispatched: list[torch.Tensor] = field(default_factory=list)  # each (E,) tokens received per expert

    def all_logits(self) -> torch.Tensor:  # (N_total, E)
        return torch.cat(self.logits) if self.logits else torch.zeros(0, self.router.num_experts)

    def sparse(self) -> bool:
        """True when experts received subsets of the tokens (a real dispatch was observed)."""
        if not self.dispatched:
            return False
        tokens = sum(len(x) for x in self.logits)
        received = torch.stack(self.dispatched).sum(0)  # (E,)
        return bool((received < tokens).any())

    def top_k(self) -> int:
        if self.router.top_k:
            return self.router.top_k
        if self.sparse():
            tokens = sum(len(x) for x in self.logits)
            return max(1, round(float(torch.stack(self.dispatched).sum()) / max(tokens, 1)))
        return 1

    def loads(self) -> torch.Tensor:
        """(E,) share of the dispatched (token, expert) assignments each expert received; sums to 1."""
        if self.sparse():
            counts = torch.stack(self.dispatched).sum(0).double()
        else:
            logits = self.all_logits().detach()
            chosen = logits.topk(min(self.top_k(), logits.shape[-1]), dim=-1).indices  # (N, k)
            counts = torch.bincount(chosen.reshape(-1), minlength=self.router.num_experts).double()
        return counts / counts.sum().clamp(min=1)


class RoutingCapture(contextlib.AbstractContextManager):
    """Forward hooks on the gates and pre-hooks on the experts of `routers`, removed on exit."""

    def __init__(self, model: nn.Module, routers: Iterable[Router], detach: bool = True):
        self.model, self.detach = model, detach
        self.records = {r.gate: RouterRecord(r) for r in routers}
        self._handles: list = []

    def __enter__(self) -> "RoutingCapture":
        modules = dict(self.model.named_modules())
        for gate, record in self.records.items():
            self._handles.append(modules[gate].register_forward_hook(self._on_gate(record)))
            if record.router.experts:
                for index, (_, expert) in enumerate(modules[record.router.experts].named_children()):
                    self._handles.append(expert.register_forward_pre_hook(self._on_expert(record, index)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_gate(self, record: RouterRecord):
        def hook(_module, _inputs, output):
            logits = output[0] if isinstance(output, (tuple, list)) else output
            logits = logits.reshape(-1, record.router.num_experts).float()  # (N, E)
            record.logits.append(logits.detach() if self.detach else logits)
            record.dispatched.append(torch.zeros(record.router.num_experts))
        return hook

    def _on_expert(self, record: RouterRecord, index: int):
        def hook(_module, inputs):
            if record.dispatched and inputs and isinstance(inputs[0], torch.Tensor):
                x = inputs[0]
                record.dispatched[-1][index] += x.shape[:-1].numel() if x.dim() > 1 else 1
        return hook


def capture_routing(subject: Subject, routers: list[Router], model: nn.Module | None = None,
                    max_batches: int | None = None) -> dict[str, RouterRecord]:
    """Run the subject's predict over evaluation batches (eval mode, no grad) and record every router."""
    model = subject.model if model is None else model
    was_training = model.training
    model.eval()
    try:
        with RoutingCapture(model, routers) as capture, torch.no_grad():
            for batch in itertools.islice(subject.eval_batches, max_batches):
                subject.predict(model, batch)
    finally:
        model.train(was_training)
    return capture.records


# ----------------------------------------------------------------------------- statistics


def switch_balance(loads: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """E·Σ_i f_i·P_i (Fedus et al. 2021) with f the loads (sum 1) and P (N, E) router probabilities.

    1.0 at uniform routing, E when one expert takes every token with certainty. Differentiable in
    `probs`, so `load-balance-loss` adds α times this to the objective.
    """
    importance = probs.mean(0)  # (E,)
    return probs.shape[-1] * (loads.to(importance.dtype) * importance).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Router z-loss (Zoph et al. 2022): mean over tokens of logsumexp(logits)²."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


def normalized_entropy(shares: torch.Tensor) -> float:
    """H(p)/log E of a distribution over E ≥ 2 outcomes (1 = uniform, 0 = one outcome)."""
    return max(0.0, entropy(shares) / math.log(len(shares))) if len(shares) > 1 else 1.0


def layer_stats(record: RouterRecord) -> dict:
    """Balance statistics of one router over the captured tokens (see expert-balance's docstring)."""
    logits = record.all_logits().detach().double()  # (N, E)
    num = record.router.num_experts
    loads = record.loads()  # (E,)
    probs = logits.softmax(-1)
    per_token = -(probs * probs.clamp(min=1e-30).log()).sum(-1) / math.log(num)  # (N,)
    fair = 1.0 / num
    k = record.top_k()
    dead = [i for i in range(num) if loads[i] < DEAD_LOAD * fair]
    return {
        "num_experts": num, "top_k": k, "tokens": len(logits), "dispatch": "observed" if record.sparse() else "top-k of logits",
        "loads": loads.tolist(), "importance": probs.mean(0).tolist(),
        "token_share_max": float(loads.max()) * k,  # share of tokens that include the busiest expert
        "cv": float(loads.std(unbiased=False) / fair), "entropy": normalized_entropy(loads),
        "max_violation": float(loads.max() / fair - 1), "dead_experts": dead, "dead_share": len(dead) / num,
        "switch_balance": float(switch_balance(loads, probs)) if len(logits) else math.nan,
        "z_loss": float(z_loss(logits)) if len(logits) else math.nan,
        "token_entropy": float(per_token.mean()) if len(logits) else math.nan,
    }


def mean_routing_entropy(subject: Subject, model: nn.Module | None = None, max_batches: int | None = 20) -> float | None:
    """Mean normalized routing entropy H(f)/log E over the subject's MoE layers (None without routers)."""
    routers = subject_routers(subject, model)
    if not routers:
        return None
    records = capture_routing(subject, routers, model, max_batches)
    return sum(normalized_entropy(r.loads()) for r in records.values()) / len(records)


class RouterPenaltyLoss:
    """loss(model, batch) = task loss + coefficient · Σ_layers penalty(record).

    The routers' logits are captured, graph kept, during the subject's own forward, so an auxiliary
    router loss needs no change to the model's code.
    """

    def __init__(self, loss: Callable, routers: list[Router], coefficient: float,
                 penalty: Callable[[RouterRecord], torch.Tensor]):
        self.loss, self.routers, self.coefficient, self.penalty = loss, routers, coefficient, penalty

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        with RoutingCapture(model, self.routers, detach=False) as capture:
            loss = self.loss(model, batch)
        terms = [self.penalty(record) for record in capture.records.values() if record.logits]
        return loss + self.coefficient * torch.stack(terms).sum() if terms else loss
