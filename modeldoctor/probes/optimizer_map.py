"""Which checkpoint tensor each parameter of a saved optimizer is, from the optimizer's `state_dict()`.

An optimizer's state dict numbers its parameters 0..n-1 in param order (group order, then list order
within a group) and keys `state` by that number; it does not say which tensor a number is, unless the
optimizer was built from `named_parameters()` (torch >= 2.6 then stores each group's `param_names`).

- Sure: every group carries `param_names` that name checkpoint tensors (exactly, or all under one prefix
  such as Lightning's `model.`): `how = "param_names"`.
- Inferred otherwise. The candidates are the checkpoint's floating tensors that are not known buffers
  (a state dict does not say which tensors are buffers; `is_buffer` knows the usual ones), in
  checkpoint order, which is `named_parameters()` order with the buffers in between. The optimizer's
  params form a sequence of shapes (known from their state tensors, unknown for a param without state)
  that must embed into the candidates as an order-preserving subsequence. The leftmost and rightmost
  embeddings bound where each param can be; where they agree its name is certain, elsewhere it is
  ambiguous and its possible names are listed. When the group concatenation does not embed, the group
  orders are tried (`group-permutation`, up to `MAX_PERMUTED_GROUPS` groups), then the groups are
  interleaved in checkpoint order (`interleaved`: the usual weight-decay / no-decay split), searched
  from the first and from the last candidate; a param is certain when the two merges agree.
Optimizer params whose known shape matches no candidate (`orphans`: built for another model, or before
a resize) are left out of the alignment.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from ..core.evidence import Weights
from .weight_layout import BUFFER_LEAVES, is_float, split_name

Shape = tuple[int, ...]
# State entries that have the shape of their parameter, in the order they are looked at.
SHAPED_STATE = ("exp_avg", "exp_avg_sq", "momentum_buffer", "square_avg", "sum", "exp_inf", "acc_delta", "prev",
                "ax", "max_exp_avg_sq")
MAX_PERMUTED_GROUPS = 5  # 120 orders at most
MERGE_BUDGET = 200_000  # search steps for interleaved groups
# Optimizer classes told apart by their param-group keys (first match wins); "stateful": whether every
# param that received a gradient gets a state entry (SGD only with momentum).
KINDS = (("history_size", "LBFGS"), ("beta2_decay", "Adafactor"), ("momentum_decay", "NAdam"), ("etas", "Rprop"),
         ("lambd", "ASGD"), ("rho", "Adadelta"), ("lr_decay", "Adagrad"), ("centered", "RMSprop"),
         ("betas", "Adam-family"), ("dampening", "SGD"))


@dataclass
class ParamMap:
    """The names of an optimizer's params (flat param order), and the candidates no group covers.

    options[i]: the candidate names param i may be (one when certain; none when unmapped).
    uncovered: candidates surely in no group; maybe_uncovered: candidates in no group or in one
    (ambiguous); missing: how many candidates are in no group (None when unmapped).
    """

    how: str  # param_names | identity | order | group-permutation | interleaved | none
    options: list[list[str]]
    candidates: list[str]
    uncovered: list[str] = field(default_factory=list)
    maybe_uncovered: list[str] = field(default_factory=list)
    missing: int | None = None
    orphans: list[int] = field(default_factory=list)
    tied: dict[str, str] = field(default_factory=dict)  # left out of the candidates: {later name: earlier name}
    note: str = ""

    @property
    def sure(self) -> bool:
        return self.how != "none" and all(len(names) == 1 for i, names in enumerate(self.options) if i not in self.orphans)

    def name(self, i: int) -> str | None:
        return self.options[i][0] if len(self.options[i]) == 1 else None

    @property
    def covered(self) -> list[str]:
        return list(dict.fromkeys(names[0] for names in self.options if len(names) == 1))


def param_order(optimizer: dict) -> list[tuple[int, int]]:
    """(group, state key) of every param, in param order."""
    return [(g, int(index)) for g, group in enumerate(optimizer["param_groups"]) for index in group["params"]]


def states(optimizer: dict) -> dict[int, dict]:
    """The per-param state with integer keys (some loaders give string keys)."""
    return {int(key): value for key, value in (optimizer.get("state") or {}).items()}


def optimizer_kind(optimizer: dict) -> str:
    """The optimizer class, guessed from its param-group keys (Adam and AdamW have `amsgrad`; AdamW decouples
    its weight decay; other `betas` optimizers, RAdam or third-party ones, are "Adam-family")."""
    group = optimizer["param_groups"][0] if optimizer["param_groups"] else {}
    kind = next((name for key, name in KINDS if key in group), "unknown")
    if kind == "Adam-family" and any("exp_inf" in entry for entry in states(optimizer).values()):
        return "Adamax"
    if kind == "Adam-family" and "amsgrad" in group:
        return "AdamW" if group.get("decoupled_weight_decay") else "Adam"
    return kind


def state_shape(entry: dict | None) -> Shape | None:
    """The param's shape as its state tensors show it, or None when the state does not say."""
    for key in SHAPED_STATE:
        value = (entry or {}).get(key)
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return tuple(value.shape)
    return None


def is_buffer(name: str, shape: Shape) -> bool:
    """A known buffer leaf, an attention mask (`*mask*`), or a `bias` of two or more dims (nanoGPT's causal mask
    `attn.bias`, (1, 1, T, T): a parameter bias is 1-D)."""
    leaf = split_name(name)[1]
    return leaf in BUFFER_LEAVES or "mask" in leaf or (leaf == "bias" and len(shape) >= 2)


def candidate_tensors(weights: Weights) -> list[tuple[str, Shape]]:
    """(name, shape) of the tensors that can be parameters: floating and not a known buffer, in checkpoint order."""
    infos = (weights.info(name) for name in weights.names())
    return [(info.name, info.shape) for info in infos if is_float(info) and not is_buffer(info.name, info.shape)]


def fits(want: Shape | None, have: Shape) -> bool:
    return want is None or tuple(want) == tuple(have)


def embed(seq: list[Shape | None], shapes: list[Shape]) -> tuple[list[int], list[int]] | None:
    """Leftmost and rightmost positions of `seq` embedded in `shapes` as an ordered subsequence, or None."""
    left, p = [], 0
    for want in seq:
        while p < len(shapes) and not fits(want, shapes[p]):
            p += 1
        if p == len(shapes):
            return None
        left.append(p)
        p += 1
    right, p = [], len(shapes) - 1
    for want in reversed(seq):
        while not fits(want, shapes[p]):
            p -= 1
        right.append(p)
        p -= 1
    return left, right[::-1]


def feasible(seq: list[Shape | None], shapes: list[Shape], left: list[int], right: list[int]) -> list[list[int]]:
    """For each element, every position some embedding puts it at: fitting, after its predecessor's leftmost
    position and before its successor's rightmost one."""
    out = []
    for i, want in enumerate(seq):
        low = left[i - 1] + 1 if i else 0
        high = right[i + 1] if i + 1 < len(seq) else len(shapes)
        out.append([p for p in range(low, high) if fits(want, shapes[p])])
    return out


def merge(groups: list[list[Shape | None]], shapes: list[Shape], backward: bool = False,
          budget: int = MERGE_BUDGET) -> list[list[int]] | None:
    """Positions of each group's params when the groups interleave in checkpoint order (each group in its own
    order, candidates left over allowed), found by a depth-first search from the first candidate (or from the
    last, `backward`) that tries the groups whose next param fits before skipping; None when none fits (or
    the search exceeds `budget` steps)."""
    seqs = [g[::-1] if backward else list(g) for g in groups]
    order = list(range(len(shapes)))[::-1] if backward else list(range(len(shapes)))
    m, n = len(shapes), sum(len(seq) for seq in seqs)
    if n > m:
        return None

    def choices(t: int, ptrs: tuple[int, ...]) -> list[int | None]:
        fit = [g for g, seq in enumerate(seqs) if ptrs[g] < len(seq) and fits(seq[ptrs[g]], shapes[order[t]])]
        fit.sort(key=lambda g: seqs[g][ptrs[g]] is None)  # a known shape before an unknown one
        return fit + ([None] if t - sum(ptrs) < m - n else [])  # None: leave the candidate uncovered

    start = (0,) * len(seqs)
    stack, picks, dead = [(start, choices(0, start))] if n else [], [], set()
    while stack:
        ptrs, opts = stack[-1]
        if not opts:
            dead.add((len(stack) - 1, ptrs))
            stack.pop()
            picks = picks[:-1]
            continue
        g = opts.pop(0)
        nxt = ptrs if g is None else ptrs[:g] + (ptrs[g] + 1,) + ptrs[g + 1:]
        picks.append(g)
        if sum(nxt) == n:
            break
        budget -= 1
        if len(stack) == m or (len(stack), nxt) in dead or budget < 0:
            picks.pop()
            if budget < 0:
                return None
            continue
        stack.append((nxt, choices(len(stack), nxt)))
    if n and sum(1 for g in picks if g is not None) < n:
        return None
    placed: list[list[int]] = [[] for _ in seqs]
    for t, g in enumerate(picks):
        if g is not None:
            placed[g].append(order[t])
    return [pos[::-1] for pos in placed] if backward else placed


def resolve_names(names: list[str], shapes: list[Shape | None], table: dict[str, Shape]) -> list[str] | None:
    """Checkpoint names for one group's `param_names`: themselves, or all under the one prefix that fits."""
    def prefixed(prefix: str) -> list[str] | None:
        full = [prefix + name for name in names]
        return full if all(n in table and fits(s, table[n]) for n, s in zip(full, shapes)) else None

    if not names or prefixed("") is not None:
        return prefixed("")
    prefixes = {c[: -len(names[0])] for c in table if c.endswith("." + names[0])}
    fitting = [p for p in prefixes if prefixed(p) is not None]
    return prefixed(fitting[0]) if len(fitting) == 1 else None


def map_params(groups: list[list[Shape | None]], candidates: list[tuple[str, Shape]],
               param_names: list[list[str]] | None = None) -> ParamMap:
    """Map params (shapes per group, in group order) to candidate tensors; see the module docstring."""
    names = [name for name, _ in candidates]
    shapes = [shape for _, shape in candidates]
    flat = [shape for group in groups for shape in group]
    table = dict(candidates)
    if param_names is not None and len(param_names) == len(groups):
        resolved = [resolve_names(pn, g, table) for pn, g in zip(param_names, groups)]
        if all(r is not None and len(r) == len(g) for r, g in zip(resolved, groups)):
            opts = [[n] for r in resolved for n in r]
            covered = {o[0] for o in opts}
            rest = [n for n in names if n not in covered]
            return ParamMap("param_names", opts, names, uncovered=rest, missing=len(rest))
    note = "param_names did not resolve to checkpoint tensors; inferred from shapes and order" if param_names else ""
    shape_set = {tuple(s) for s in shapes}
    orphans = [i for i, s in enumerate(flat) if s is not None and tuple(s) not in shape_set]
    starts = list(itertools.accumulate([0] + [len(g) for g in groups]))
    if flat and len(orphans) == len(flat):
        return ParamMap("none", [[] for _ in flat], names, orphans=orphans, note="no optimizer state has the shape of a "
                        "checkpoint tensor (flattened or sharded optimizer state, or another model's)")
    kept = [[i for i in range(starts[g], starts[g + 1]) if i not in orphans] for g in range(len(groups))]
    positions: list[set[int]] = [set() for _ in flat]
    how = "none"
    perms = list(itertools.permutations(range(len(groups)))) if len(groups) <= MAX_PERMUTED_GROUPS else [tuple(range(len(groups)))]
    for perm in perms:
        seq_idx = [i for g in perm for i in kept[g]]
        found = embed([flat[i] for i in seq_idx], shapes)
        if found is None:
            continue
        for i, pos in zip(seq_idx, feasible([flat[i] for i in seq_idx], shapes, *found)):
            positions[i].update(pos)
        if how == "none":
            how = "order" if perm == tuple(range(len(groups))) else "group-permutation"
        if perm == tuple(range(len(groups))):
            break  # the groups' own order embeds: take it
    if how == "none":
        merged = [merge([[flat[i] for i in k] for k in kept], shapes, backward) for backward in (False, True)]
        if merged[0] is not None and merged[1] is not None:
            how = "interleaved"
            for run in merged:
                for k, pos in zip(kept, run):
                    for i, p in zip(k, pos):
                        positions[i].add(p)
    if how == "none":
        return ParamMap("none", [[] for _ in flat], names, orphans=orphans,
                        note=note or f"{len(flat)} optimizer params do not align with {len(names)} candidate tensors")
    if how == "order" and len(flat) - len(orphans) == len(names):
        how = "identity"
    opts = [[names[p] for p in sorted(pos)] for pos in positions]
    sure_covered = {o[0] for o in opts if len(o) == 1}
    anywhere = {n for o in opts for n in o}
    return ParamMap(how, opts, names, uncovered=[n for n in names if n not in anywhere],
                    maybe_uncovered=[n for n in names if n in anywhere and n not in sure_covered],
                    missing=len(names) - (len(flat) - len(orphans)), orphans=orphans, note=note)


def optimizer_map(weights: Weights) -> ParamMap:
    """The ParamMap of `weights.optimizer` over the checkpoint's tensors. When some candidates are left over,
    tied duplicates among them are dropped and the map redone (`tied`)."""
    optimizer = weights.optimizer
    state = states(optimizer)
    groups = [[state_shape(state.get(int(i))) for i in group["params"]] for group in optimizer["param_groups"]]
    names = [group.get("param_names") for group in optimizer["param_groups"]]
    names = names if all(n is not None for n in names) else None
    candidates = candidate_tensors(weights)
    pmap = map_params(groups, candidates, names)
    if pmap.missing:
        tied = tied_duplicates(weights, candidates)
        untied = map_params(groups, [c for c in candidates if c[0] not in tied], names) if tied else None
        if untied is not None and untied.how != "none":
            pmap, pmap.tied = untied, tied
    return pmap


def tied_duplicates(weights: Weights, candidates: list[tuple[str, Shape]]) -> dict[str, str]:
    """{later name: earlier name} for candidates that are one tensor saved twice (tied weights: a state dict lists
    both names, `parameters()` only the first), told by shared storage (`torch.load` keeps it; safetensors files
    drop the duplicate instead). Equal values are not enough: deep-copied layers start out equal."""
    count: dict[Shape, int] = {}
    for _, shape in candidates:
        count[tuple(shape)] = count.get(tuple(shape), 0) + 1
    seen: dict[tuple, str] = {}
    tied: dict[str, str] = {}
    for name, shape in (c for c in candidates if count[tuple(c[1])] > 1):  # only shapes that occur twice are read
        tensor = weights.tensor(name)
        key = (tensor.data_ptr(), tuple(shape), tensor.dtype)
        if tensor.numel() and key in seen:
            tied[name] = seen[key]
        seen.setdefault(key, name)
    return tied
