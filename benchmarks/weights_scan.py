"""Scan speed and peak memory of a weights-only diagnosis against `torch.load` of the same file, in one process.

    python benchmarks/weights_scan.py [--mb 600] [--reps 3] [--json benchmarks/results/weights_scan.json]

Writes a synthetic transformer-shaped checkpoint of at least `--mb` MB (10^6 bytes; memory is reported in MiB) (float32 attention and MLP
matrices, a large token embedding), warms the page cache, then alternates, `reps` times:
- baseline: `torch.load(path, weights_only=True)` and a touch of every tensor (what reading it costs);
- scan: `modeldoctor.diagnose(path, checks=<every weight check but spectral-shape>)`, reading the same
  file through the mmap reader, hashing it, and running the checks.
Time is wall time (median of the reps). Peak memory is the process's high-water RSS (VmHWM) above its
RSS before the arm, reset between arms through /proc/self/clear_refs (Linux). Goals (issue 10): scan
time <= 1.5x the load time; scan peak <= file size + largest tensor. Then one `--spectral` run on the
same file reports the seconds per layer and how each layer's spectrum was computed (full or truncated).
One torch thread, passive OpenMP waiting: the setting of the CLI (`--threads 1`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402

import modeldoctor  # noqa: E402
from modeldoctor.core.registry import CHECKS, load_plugins  # noqa: E402


def write_checkpoint(path: Path, target_mb: int) -> tuple[int, int]:
    """A GPT-style state dict of at least `target_mb` MB; returns (file bytes, largest tensor bytes)."""
    generator = torch.Generator().manual_seed(0)
    width, vocab = 1024, 32000
    state = {"tok_embeddings.weight": torch.randn(vocab, width, generator=generator) * 0.5}
    layer = 0
    while sum(t.numel() * 4 for t in state.values()) < target_mb * 1e6:
        prefix = f"layers.{layer}."
        for name in ("attn.q", "attn.k", "attn.v", "attn.o"):
            state[prefix + name + ".weight"] = trained_like((width, width), generator)
        state[prefix + "mlp.up.weight"] = trained_like((4 * width, width), generator)
        state[prefix + "mlp.down.weight"] = trained_like((width, 4 * width), generator)
        state[prefix + "norm.weight"] = 1 + 0.1 * torch.randn(width, generator=generator)
        layer += 1
    torch.save(state, path)
    return path.stat().st_size, max(t.numel() * t.element_size() for t in state.values())


def trained_like(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Heavier-tailed than any init and with some low-rank structure, as trained weights are."""
    bulk = torch.randn(shape, generator=generator) * 0.02
    spikes = torch.randn(shape[0], 8, generator=generator) @ torch.randn(8, shape[1], generator=generator) * 0.01
    return bulk + spikes


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS


def measure(arm) -> tuple[float, float]:
    """(wall seconds, peak RSS above the starting RSS in MB) of one call."""
    reset_peak()
    before = rss_kb("VmRSS")
    start = time.perf_counter()
    arm()
    seconds = time.perf_counter() - start
    return seconds, (rss_kb("VmHWM") - before) / 1024  # MiB


def baseline(path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    total = 0.0
    for tensor in state.values():
        total += float(tensor.view(-1)[-1])  # loaded in full already; touch to be fair
    del state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=600)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "weights_scan.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_plugins()
    checks = [slug for slug, check in CHECKS.items() if check.needs == "weights" and slug != "spectral-shape"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "synthetic.pt"
        file_bytes, largest = write_checkpoint(path, args.mb)
        scan = lambda: modeldoctor.diagnose(path, checks=checks, figures=False, budget_s=None)
        baseline(path), scan()  # warm the page cache and the imports
        rows = {"load": [], "scan": []}
        for _ in range(args.reps):
            rows["load"].append(measure(lambda: baseline(path)))
            rows["scan"].append(measure(scan))
        report = scan()
        spectral_report = modeldoctor.diagnose(path, checks=["spectral-shape"], options={"spectral-shape": {"enabled": True}},
                                               figures=False, budget_s=None)
    load_s = statistics.median(t for t, _ in rows["load"])
    scan_s = statistics.median(t for t, _ in rows["scan"])
    load_mb = max(m for _, m in rows["load"])
    scan_mb = max(m for _, m in rows["scan"])
    spectral = spectral_report["results"][0]
    result = {
        "file_mib": round(file_bytes / 2**20, 1), "largest_tensor_mib": round(largest / 2**20, 1),
        "tensors": len(report["weights"]["layers"]), "checks": checks,
        "load_s": round(load_s, 3), "scan_s": round(scan_s, 3), "time_ratio": round(scan_s / load_s, 2),
        "load_peak_mib": round(load_mb, 1), "scan_peak_mib": round(scan_mb, 1),
        "peak_goal_mib": round((file_bytes + largest) / 2**20, 1), "peak_within_goal": scan_mb <= (file_bytes + largest) / 2**20,
        "statuses": {r["check"]: r["status"] for r in report["results"]},
        "per_check_s": {r["check"]: r["duration_s"] for r in report["results"]},
        "spectral": {"status": spectral["status"], "seconds": spectral["duration_s"],
                     **{k: v for k, v in (spectral.get("metrics") or {}).items() if not isinstance(v, (list, dict))}},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"time ratio scan/load {result['time_ratio']} (goal <= 1.5); peak {scan_mb:.0f} MiB against "
          f"file + largest tensor {result['peak_goal_mib']} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
