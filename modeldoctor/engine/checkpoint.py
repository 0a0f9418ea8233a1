"""Saving checkpoints, and loading any checkpoint into evidence (its weights, and a subject when one is named).

`save_checkpoint` writes a dict that `torch.load(weights_only=True)` reads back and that names its
subject, config and applied fixes:

    {"modeldoctor": {"format": 1, "subject": "sparse-field", "config": {...}, "fixes": [...],
                     "tool_version": "..."},
     "state_dict": {...}}

`load_checkpoint` reads every format of `engine.readers` (state dicts, training checkpoints,
Lightning, safetensors, Hugging Face folders). A file that names no subject, given no `--subject`,
is diagnosed from its weights alone.
"""
from __future__ import annotations

import hashlib
import io
import json
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import InputError
from ..core.evidence import Evidence, Weights
from ..core.fix import apply_fixes
from ..core.registry import build_subject
from ..core.subject import Subject
from ..core.version import __version__
from ..probes.weight_stats import tensor_stats
from .files import atomic_write_bytes
from .readers import META_KEY, read_checkpoint


@dataclass
class LoadedCheckpoint:
    """A checkpoint read into evidence: the weights it holds and, when it names one, the subject built from it.

    why_no_subject: why no subject was built although one was named (the subject checks say so when skipped).
    """

    subject: Subject | None
    path: str
    digest: Digest | None  # of the file (None for a folder); `sha256` waits for it
    format: str  # modeldoctor | state_dict | wrapper:<key> | lightning | safetensors | hf-folder | pickled-module
    weights: Weights | None = None
    notes: list[str] = field(default_factory=list)
    why_no_subject: str | None = None

    @property
    def sha256(self) -> str | None:
        value = self.digest.value() if self.digest is not None else None
        if self.weights is not None:
            self.weights.sha256 = value
        return value

    @property
    def evidence(self) -> Evidence:
        missing = {"subject": self.why_no_subject} if self.why_no_subject else {}
        return Evidence(subject=self.subject, weights=self.weights, missing=missing)


class Digest:
    """The sha256 of a file, computed in a background thread while the checks run.

    hashlib releases the GIL on large blocks, so on a second core hashing a large checkpoint costs the
    scan nothing; `value()` waits for it.
    """

    def __init__(self, path: Path):
        self._value: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(path,), name="modeldoctor-sha256", daemon=True)
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            self._value = sha256_of(path)
        except BaseException as error:  # re-raised in the caller's thread by value()
            self._error = error

    def value(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise InputError(f"could not read the checkpoint to hash it: {self._error}") from self._error
        return self._value or ""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: nn.Module | Subject,
    *,
    subject: str | None = None,
    config: dict | None = None,
    fixes: list[str] | None = None,
    extra: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
) -> Path:
    """Write an atomic, weights-only-loadable checkpoint. Pass a Subject, or a model plus `subject`/`config`.

    `optimizer` and `scheduler` (an LR scheduler) are saved beside the weights, so the optimizer-state
    check can tell which parameters trained.
    """
    if isinstance(model, Subject):
        subject = subject or model.name
        config = model.config if config is None else config
        fixes = list(model.fixes_applied) if fixes is None else fixes
        model = model.model
    if not subject:
        raise ValueError("save_checkpoint needs the registered subject name")
    meta = {
        "format": 1,
        "subject": subject,
        "config": json.loads(json.dumps(config or {})),  # JSON types only, so weights_only can read it
        "fixes": list(fixes or []),
        "tool_version": __version__,
        **(extra or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    training = {"optimizer": optimizer.state_dict()} if optimizer is not None else {}
    if scheduler is not None:
        training["lr_scheduler"] = scheduler.state_dict()
    torch.save({META_KEY: meta, "state_dict": state, **training}, buffer)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def read_config_file(path: str | Path) -> dict:
    """A JSON or TOML config file as a dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {error}") from error
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold an object/table at the top level")
    return data


def fit_report(model: nn.Module, state: dict) -> str | None:
    """One line naming the keys and shapes that differ between the model and `state`, or None."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return None

    def listing(label: str, items: list[str]) -> str:
        shown = ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")
        return f"{label} {len(items)}: {shown}"

    parts = [listing(label, items) for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if items]
    return "; ".join(parts)


def load_checkpoint(
    path: str | Path,
    *,
    subject: str | None = None,
    config: dict | None = None,
    trust: bool = False,
    against: str | Path | None = None,
) -> LoadedCheckpoint:
    """Read a checkpoint into evidence: its weights always, and a Subject when one is named.

    The subject is the one the file names (modeldoctor's format) or `subject`; without either the
    checkpoint is diagnosed from its weights alone. `against` is a second checkpoint to compare with
    (`--against`: the initial or pre-fine-tuning weights). Every problem is an InputError with one line.
    """
    read = read_checkpoint(path, trust=trust)
    weights, meta, fmt = read.weights, read.meta, read.format
    path = Path(path)
    digest = Digest(path) if path.is_file() else None
    if against is not None:
        weights.base = read_checkpoint(against, trust=trust).weights
    name = subject or meta.get("subject")
    if not name:
        return LoadedCheckpoint(subject=None, path=str(path), digest=digest, format=fmt, weights=weights, notes=read.notes)
    merged_config = {**(meta.get("config") or {}), **(config or {})}
    built = build_subject(name, merged_config)
    built = apply_fixes(built, meta.get("fixes") or [], copy=False, replay=True)
    state = _fit_names(dict(weights.tensors()), built.model)
    bad = [name for name in weights.names() if tensor_stats(weights, name).nonfinite]  # the pass non-finite reads too
    if bad:
        why = (f"the weights hold NaN/Inf in {len(bad)} tensor(s) ({', '.join(bad[:3])}): a live subject "
               "would train and evaluate garbage; see non-finite")
        return LoadedCheckpoint(subject=None, path=str(path), digest=digest, format=fmt, weights=weights,
                                notes=read.notes, why_no_subject=why)
    mismatch = fit_report(built.model, state)
    if mismatch:
        raise InputError(f"{path} does not fit subject {name!r}: {mismatch}")
    built.model.load_state_dict(state)
    return LoadedCheckpoint(subject=built, path=str(path), digest=digest, format=fmt, weights=weights, notes=read.notes)


def _fit_names(state: dict, model: nn.Module) -> dict:
    """Names as the model spells them: a Lightning module's attribute prefix (`model.`) dropped when that fits."""
    own = set(model.state_dict())
    if not state or set(state) <= own:
        return state
    heads = {name.split(".", 1)[0] for name in state}
    if len(heads) == 1:
        prefix = heads.pop() + "."
        stripped = {name[len(prefix):]: v for name, v in state.items() if name.startswith(prefix)}
        if set(stripped) <= own and len(stripped) == len(state):
            return stripped
    return state
