"""modeldoctor: diagnose PyTorch models that run without errors but predict badly.

Flat public API; see README.md and `modeldoctor --help`.
"""
import os

# Tiny models on busy cores: OpenMP threads that spin-wait make PyTorch 20-40x slower.
# Passive waiting must be chosen before torch loads its OpenMP runtime; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .core.version import __version__  # noqa: E402

from .core.check import Check, CheckContext  # noqa: E402
from .engine.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint  # noqa: E402
from .core.errors import BudgetExceeded, InputError  # noqa: E402
from .core.fix import Fix, apply_fixes  # noqa: E402
from .core.registry import build_subject, load_plugin, register_check, register_fix, register_subject  # noqa: E402
from .core.capabilities import Capabilities, RouterSpec  # noqa: E402
from .core.evidence import Evidence, TensorInfo, Trace, TraceStep, Weights  # noqa: E402
from .core.results import CheckResult, Figure, Finding, Measurement  # noqa: E402
from .engine.runner import build_report, run_battery, run_check  # noqa: E402
from .core.subject import Codec, Head, MappedBatches, MaskSpec, QuerySpace, Recipe, Subject, Task, TensorBatches, regression_subject  # noqa: E402
from .probes.training import StopTraining, TrainMonitor, evaluate, seed_everything, train  # noqa: E402

__all__ = [
    "BudgetExceeded", "Capabilities", "Check", "Codec", "Head", "CheckContext", "CheckResult", "Evidence", "Figure", "Finding",
    "Fix", "InputError", "Measurement", "RouterSpec", "TensorInfo", "Trace", "TraceStep", "Weights",
    "LoadedCheckpoint", "MappedBatches", "MaskSpec", "QuerySpace", "Recipe", "Subject", "Task", "TensorBatches", "apply_fixes",
    "StopTraining", "TrainMonitor", "build_report", "build_subject", "evaluate", "load_checkpoint", "load_plugin", "register_check",
    "register_fix", "register_subject", "regression_subject", "run_battery", "run_check", "save_checkpoint", "seed_everything",
    "train",
]
