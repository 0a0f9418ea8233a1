"""Saving and safely loading checkpoints.

`save_checkpoint` writes a dict that `torch.load(weights_only=True)` reads back and that names its
subject, config and applied fixes:

    {"modeldoctor": {"format": 1, "subject": "sparse-field", "config": {...}, "fixes": [...],
                     "tool_version": "..."},
     "state_dict": {...}}

`load_checkpoint` also accepts plain state dicts, the common wrappers (`state_dict`,
`model_state_dict`, `model`) given `--subject NAME [--config FILE]`, and `.safetensors` files
(modeldoctor metadata, if any, in the header). Pickled code loads only with `trust=True`.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import tomllib
import warnings
import zipfile
from dataclasses import dataclass
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
from .files import atomic_write_bytes

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim")
SCHEDULER_KEYS = ("lr_scheduler", "scheduler", "scheduler_state_dict")
META_KEY = "modeldoctor"


@dataclass
class LoadedCheckpoint:
    """A checkpoint read into evidence: the subject built from it and the weights it holds."""

    subject: Subject
    path: str
    sha256: str
    format: str  # modeldoctor | state_dict | wrapper:<key> | safetensors | pickled-module
    weights: Weights | None = None

    @property
    def evidence(self) -> Evidence:
        return Evidence(subject=self.subject, weights=self.weights)


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
) -> Path:
    """Write an atomic, weights-only-loadable checkpoint. Pass a Subject, or a model plus `subject`/`config`."""
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
    torch.save({META_KEY: meta, "state_dict": state}, buffer)
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


def _torch_load(path: Path, trust: bool) -> Any:
    if trust:
        warnings.warn(
            f"loading {path} with --trust-checkpoint: pickled code in it will run. Only do this for files you trust.",
            stacklevel=3,
        )
        try:
            return torch.load(path, map_location="cpu", weights_only=False)  # only here, under --trust-checkpoint
        except Exception as error:
            raise InputError(f"{path}: could not load even as a trusted pickle: {type(error).__name__}: {_first_line(error)}") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        message = str(error)
        found = re.search(r"GLOBAL ([\w.]+)", message)
        if found:
            raise InputError(
                f"{path} contains pickled Python code ({found.group(1)}); refusing to load it. "
                "If you trust its source, re-run with --trust-checkpoint."
            ) from error
        if isinstance(error, EOFError) or path.stat().st_size == 0:
            raise InputError(f"{path} is empty or truncated: not a loadable checkpoint") from error
        if _starts_like_zip(path) or "zip archive" in message or "central directory" in message:
            raise InputError(f"{path} is a corrupt or truncated PyTorch checkpoint: {_first_line(error)}") from error
        raise InputError(f"{path} is not a PyTorch checkpoint (unreadable or corrupt data)") from error


def _starts_like_zip(path: Path) -> bool:
    """A (possibly truncated) zip, i.e. a torch.save file: a cut-off one has no central directory for is_zipfile."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04" or zipfile.is_zipfile(path)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _load_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        from safetensors import safe_open
    except ImportError as error:  # pragma: no cover - safetensors is a declared dependency
        raise InputError("reading .safetensors needs the `safetensors` package") from error
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise InputError(f"{path} is not a valid .safetensors file: {_first_line(error)}") from error
    try:
        meta = json.loads(metadata[META_KEY]) if META_KEY in metadata else {}
    except ValueError as error:
        raise InputError(f"{path}: the {META_KEY!r} header metadata is not valid JSON: {error}") from error
    if not isinstance(meta, dict):
        raise InputError(f"{path}: the {META_KEY!r} header metadata must be a JSON object")
    return meta, state


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _unwrap(raw: Any, path: Path) -> tuple[dict, dict, str]:
    """(modeldoctor metadata, state dict, format name) from whatever torch.load returned."""
    if isinstance(raw, nn.Module):
        return {}, raw.state_dict(), "pickled-module"
    if not isinstance(raw, dict):
        raise InputError(f"{path} holds a {type(raw).__name__}, not a state dict or a checkpoint dict")
    if META_KEY in raw:
        if not isinstance(raw[META_KEY], dict) or not _is_state_dict(raw.get("state_dict")):
            raise InputError(f"{path}: malformed modeldoctor checkpoint (metadata must be a dict and state_dict hold tensors)")
        return dict(raw[META_KEY]), raw["state_dict"], "modeldoctor"
    for key in WRAPPER_KEYS:
        inner = raw.get(key)
        if isinstance(inner, nn.Module):
            return {}, inner.state_dict(), f"wrapper:{key}"
        if _is_state_dict(inner):
            return {}, inner, f"wrapper:{key}"
    if _is_state_dict(raw):
        return {}, raw, "state_dict"
    keys = ", ".join(sorted(map(str, raw))[:8])
    raise InputError(f"{path}: found no state dict (looked for {', '.join(WRAPPER_KEYS)} or tensors at the top; keys: {keys})")


def _strip_prefix(state: dict, model: nn.Module, prefix: str = "module.") -> dict:
    """Drop the `module.` prefix DataParallel/DDP adds, when the model itself lacks it."""
    own = model.state_dict()
    if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


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
) -> LoadedCheckpoint:
    """Load a checkpoint into a freshly built Subject. Every problem is an InputError with one clear line."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise InputError(f"checkpoint is not a file: {path}")
    raw = None
    if path.suffix == ".safetensors":
        meta, state = _load_safetensors(path)
        fmt = "safetensors"
    else:
        raw = _torch_load(path, trust)
        meta, state, fmt = _unwrap(raw, path)
    name = subject or meta.get("subject")
    if not name:
        raise InputError(f"{path} does not name its subject; pass --subject NAME (see `modeldoctor list`)")
    merged_config = {**(meta.get("config") or {}), **(config or {})}
    beside = training_state(raw) if fmt.startswith("wrapper:") else {}
    built = build_subject(name, merged_config)
    built = apply_fixes(built, meta.get("fixes") or [], copy=False)
    state = _strip_prefix(state, built.model)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InputError(f"{path} has NaN/Inf weights in {len(bad)} tensor(s): {', '.join(bad[:4])}")
    mismatch = fit_report(built.model, state)
    if mismatch:
        raise InputError(f"{path} does not fit subject {name!r}: {mismatch}")
    built.model.load_state_dict(state)
    digest = sha256_of(path)
    weights = Weights.from_state_dict(state, path=str(path), format=fmt, sha256=digest, **beside)
    return LoadedCheckpoint(subject=built, path=str(path), sha256=digest, format=fmt, weights=weights)


def training_state(raw: dict) -> dict:
    """The optimizer and scheduler state and plain entries (epoch, step) saved beside a model's weights."""
    def first(keys):
        return next((raw[k] for k in keys if isinstance(raw.get(k), dict)), None)

    extra = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, (int, float, str, bool))}
    return {"optimizer": first(OPTIMIZER_KEYS), "scheduler": first(SCHEDULER_KEYS), "extra": extra}
