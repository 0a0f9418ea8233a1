"""Overhead of gradient tracing (`GradTracer`) against plain training steps, in one process.

    python benchmarks/grad_norm_overhead.py [--reps 15] [--steps 30] [--json FILE]

For each model, after a warm-up, runs `reps` rounds; each round runs, in a shuffled order,
`train(subject, steps)` (plain), `train(subject, steps, monitor=GradTracer(model))` (traced: gradient
norms and update ratios every step, the grad-norms check's setting) and the same with
`update_every=10` (update ratios every 10th step). It reports the median CPU time per step of each
arm (thread CPU time, so other processes on a shared machine disturb it less; wall time too) and
the ratios traced/plain. Goal: ratio ≤ 1.05.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402
from torch import nn  # noqa: E402

import modeldoctor  # noqa: E402
from modeldoctor.probes.gradtrace import GradTracer  # noqa: E402


def sparse_field() -> modeldoctor.Subject:
    """The sample's transformer (encoder, cross-attention, MLPs): ~50 parameter tensors."""
    return modeldoctor.build_subject("sparse-field", {"n_train_fields": 256, "n_eval_fields": 16, "train_queries": "random"})


def mlp() -> modeldoctor.Subject:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2048, 32, generator=generator)
    y = torch.sin(x[:, :4].sum(-1, keepdim=True))
    model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(128, 128), nn.GELU())])
    model = nn.Sequential(nn.Linear(32, 128), nn.GELU(), model, nn.Linear(128, 1))
    return modeldoctor.regression_subject("mlp", model, (x, y), (x[:64], y[:64]), batch_size=64)


MODELS = {"sparse-field": sparse_field, "mlp-8x128": mlp}


ARMS = {"plain": None, "traced": 1, "traced_every10": 10}  # arm -> GradTracer(update_every=...)


def time_per_step(subject: modeldoctor.Subject, steps: int, update_every: int | None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per training step, tracer construction and conversion included."""
    cpu, wall = time.thread_time(), time.perf_counter()
    monitor = None if update_every is None else GradTracer(subject.model, update_every=update_every)
    modeldoctor.train(subject, steps, monitor=monitor)
    if monitor is not None:
        monitor.result()  # the one conversion at the end is part of the cost
    return (time.thread_time() - cpu) / steps, (time.perf_counter() - wall) / steps


def measure(name: str, reps: int, steps: int) -> dict:
    subject = MODELS[name]()
    modeldoctor.seed_everything(0)
    order = random.Random(0)
    for update_every in ARMS.values():  # warm-up: allocator, lazy imports, first-call paths
        time_per_step(subject, steps, update_every)
    cpu: dict[str, list[float]] = {arm: [] for arm in ARMS}
    wall: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for _ in range(reps):
        for arm in order.sample(list(ARMS), len(ARMS)):
            c, w = time_per_step(subject, steps, ARMS[arm])
            cpu[arm].append(c)
            wall[arm].append(w)
    row = {"model": name, "tensors": sum(1 for _ in subject.model.parameters()),
           "parameters": sum(p.numel() for p in subject.model.parameters()), "steps": steps, "reps": reps}
    for arm in ARMS:
        row[f"{arm}_ms_per_step"] = 1e3 * statistics.median(cpu[arm])
        row[f"{arm}_wall_ms_per_step"] = 1e3 * statistics.median(wall[arm])
    for arm in ("traced", "traced_every10"):
        row[f"{arm}_ratio"] = row[f"{arm}_ms_per_step"] / row["plain_ms_per_step"]
        row[f"{arm}_wall_ratio"] = row[f"{arm}_wall_ms_per_step"] / row["plain_wall_ms_per_step"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(name, args.reps, args.steps) for name in args.models]
    print(f"median CPU ms per step over {args.reps} rounds of {args.steps} steps ({args.threads} thread)")
    print(f"{'model':13s} {'tensors':>7s} {'params':>7s} {'plain':>7s} {'traced':>7s} {'ratio':>6s} "
          f"{'every10':>7s} {'ratio':>6s} {'wall ratio':>10s}")
    for r in rows:
        print(f"{r['model']:13s} {r['tensors']:7d} {r['parameters']:7d} {r['plain_ms_per_step']:7.3f} "
              f"{r['traced_ms_per_step']:7.3f} {r['traced_ratio']:6.3f} {r['traced_every10_ms_per_step']:7.3f} "
              f"{r['traced_every10_ratio']:6.3f} {r['traced_wall_ratio']:10.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"torch": torch.__version__, "threads": args.threads, "rows": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
