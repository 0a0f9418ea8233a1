"""Cost of the spectral-shape check per layer: the full spectrum against the top-q randomized SVD.

    python benchmarks/spectral_cost.py [--top-q 256] [--threads 1] [--json benchmarks/results/spectral_cost.json]

Builds a handful of synthetic "trained-like" weights of growing size (square and rectangular, 256 to
4096): a Gaussian bulk N(0, 1/n) plus k = min(m, n)/8 heavy-tailed directions whose squared strengths
follow a power law (alpha 2.5) above the bulk's edge, so the ESD has a Marchenko-Pastur bulk and a
power-law tail as Martin & Mahoney describe. For each it times, as the check does it per layer
(`SpectralShape.analyse`: SVD, ESD, power-law fit, stable rank), the full spectrum
(`torch.linalg.svdvals`) and the top `top_q` singular values (`torch.svd_lowrank`), and compares
their alpha and stable rank. Then it runs the check itself with its default options over all the
layers and reports its total and per-layer seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import numpy as np  # noqa: E402
import torch  # noqa: E402

from modeldoctor import Weights, run_check  # noqa: E402
from modeldoctor.checks.spectral_shape import SpectralShape  # noqa: E402

SHAPES = [(256, 256), (512, 512), (1024, 1024), (1024, 4096), (2048, 2048), (4096, 1024), (4096, 4096)]
RESULTS = Path(__file__).resolve().parent / "results" / "spectral_cost.json"


def trained_like(m: int, n: int, seed: int = 0, alpha: float = 2.5) -> torch.Tensor:
    """(m, n): a Gaussian bulk plus min(m, n)/8 spikes with power-law squared strengths above the bulk edge."""
    g = torch.Generator().manual_seed(seed)
    bulk = torch.randn(m, n, generator=g) / n**0.5  # ESD edge near (1 + sqrt(m/n))²
    k = min(m, n) // 8
    edge = (1 + (m / n) ** 0.5) ** 2
    strengths = edge * (1 - np.random.default_rng(seed).random(k)) ** (-1 / (alpha - 1))  # (k,) Pareto above the edge
    u, v = torch.randn(m, k, generator=g) / m**0.5, torch.randn(n, k, generator=g) / n**0.5  # nearly orthonormal
    return bulk + (u * torch.tensor(np.sqrt(strengths), dtype=torch.float32)) @ v.T


def time_layer(check: SpectralShape, name: str, matrix: torch.Tensor, reps: int) -> dict:
    best = None
    for _ in range(reps):
        torch.manual_seed(0)
        row, _, _ = check.analyse(name, matrix)
        best = row if best is None or row["seconds"] < best["seconds"] else best
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top-q", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=1, help="best of this many timings per layer and method")
    parser.add_argument("--json", metavar="FILE", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    full = SpectralShape(enabled=True, full_svd_max=10**9)
    truncated = SpectralShape(enabled=True, full_svd_max=0, top_q=args.top_q)
    matrices = {f"layer{i}.weight": trained_like(m, n, seed=i) for i, (m, n) in enumerate(SHAPES)}
    rows = []
    print(f"per layer, {args.threads} thread(s), top_q {args.top_q}")
    print(f"{'shape':>11s} {'method':>9s} {'n_eigs':>6s} {'seconds':>8s} {'alpha':>6s} {'n_tail':>6s} {'ks':>6s} {'stable rank':>11s}")
    for name, matrix in matrices.items():
        for method, check in (("full", full), ("top-q", truncated)):
            row = time_layer(check, name, matrix, args.reps)
            if method == "top-q" and not row["truncated"]:
                continue  # too small to truncate: the check takes the full spectrum
            rows.append({"method": method, **row})
            print(f"{'x'.join(map(str, row['shape'])):>11s} {method:>9s} {row['n_eigs']:6d} {row['seconds']:8.3f} "
                  f"{row['alpha']:6.2f} {row['n_tail']:6d} {row['ks']:6.3f} {row['stable_rank']:11.2f}")
    started = time.perf_counter()
    result = run_check(SpectralShape(enabled=True, top_q=args.top_q), Weights.from_state_dict(matrices), figures=False)
    wall = time.perf_counter() - started
    m = result.metrics
    print(f"the check (defaults: full_svd_max 1024, top_q {args.top_q}): {m['num_layers']} layers, "
          f"{m['num_truncated']} truncated ({', '.join(m['truncated_layers'])}), {m['total_seconds']:.2f} s, "
          f"{m['seconds_per_layer']:.2f} s per layer; status {result.status}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump({"torch": torch.__version__, "threads": args.threads, "top_q": args.top_q, "rows": rows,
                       "check": {"status": result.status, "total_seconds": m["total_seconds"], "wall_seconds": wall,
                                 "seconds_per_layer": m["seconds_per_layer"], "truncated_layers": m["truncated_layers"],
                                 "layers": m["layers"]}}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
