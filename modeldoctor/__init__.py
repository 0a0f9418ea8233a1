"""modeldoctor: diagnose PyTorch models that run without errors but predict badly.

Flat public API; see README.md and `modeldoctor --help`.
"""
import os

# Tiny models on busy cores: OpenMP threads that spin-wait make PyTorch 20-40x slower.
# Passive waiting must be chosen before torch loads its OpenMP runtime; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .core.capabilities import Capabilities, RouterSpec  # noqa: E402
from .core.check import Check, CheckContext  # noqa: E402
from .core.errors import BudgetExceeded, InputError  # noqa: E402
from .core.evidence import Evidence, TensorInfo, Trace, TraceStep, Weights  # noqa: E402
from .core.fix import Fix, apply_fixes  # noqa: E402
from .core.registry import build_subject, load_plugin, register_check, register_fix, register_subject  # noqa: E402
from .core.results import CheckResult, Figure, Finding, Measurement  # noqa: E402
from .core.subject import (  # noqa: E402
    Codec,
    Head,
    MappedBatches,
    MaskSpec,
    QuerySpace,
    Recipe,
    Subject,
    Task,
    TensorBatches,
    regression_subject,
)
from .core.version import __version__  # noqa: E402
from .engine.bench import bench  # noqa: E402  (the function; the module stays modeldoctor.engine.bench)
from .engine.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint  # noqa: E402
from .engine.demo import demo as _demo  # noqa: E402
from .engine.diagnosis import diagnose  # noqa: E402
from .engine.runner import build_report, run_battery, run_check  # noqa: E402
from .probes.training import StopTraining, TrainMonitor, evaluate, seed_everything, train  # noqa: E402

__all__ = [
    "BudgetExceeded", "Capabilities", "Check", "Codec", "Head", "CheckContext", "CheckResult", "Evidence", "Figure", "Finding",
    "Fix", "InputError", "Measurement", "RouterSpec", "TensorInfo", "Trace", "TraceStep", "Weights",
    "LoadedCheckpoint", "MappedBatches", "MaskSpec", "QuerySpace", "Recipe", "Subject", "Task", "TensorBatches", "apply_fixes",
    "StopTraining", "TrainMonitor", "bench", "build_report", "build_subject", "demo", "diagnose", "evaluate", "load_checkpoint",
    "load_plugin", "register_check", "register_fix", "register_subject", "regression_subject", "run_battery", "run_check",
    "save_checkpoint", "seed_everything", "train", "__version__",
]


def demo(name: str = "sparse-field", out_dir="reports", *, seeds: int = 3, steps: int | None = None, jobs: int = 0,
         on_stage=None, progress=None, on_result=None) -> dict:
    """Train the failing sample `name`, diagnose it, bench the prescribed fixes, write checkpoint, JSON and HTML.

    Returns {"report", "bench", "checkpoint", "json", "html"}; see `modeldoctor.engine.demo.demo`,
    which this calls with the report layer's page renderer (the engine layer cannot import it).
    """
    from .report import render_page

    return _demo(name, out_dir, seeds=seeds, steps=steps, jobs=jobs, on_stage=on_stage, progress=progress,
                 on_result=on_result, render_page=render_page)
