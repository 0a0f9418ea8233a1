"""Weights fixes, applied to a checkpoint's tensors and written to a new file in the input's own format.

    patch_weights(loaded, ["reinit-dead-units"], "patched.pt")

Each fix sees the tensors the previous ones produced. The new file keeps everything else the input
held (optimizer state, epoch, Hugging Face config), so the user's own loading code still reads it:
a torch file keeps its structure with the replaced tensors swapped in, a .safetensors file gets the
fixes in its header metadata, a Hugging Face folder is copied with only the shards that changed
rewritten. Beside it, `<out>.modeldoctor.json` lists what was applied and replaced. The input is
never written to.
"""
from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..core.errors import InputError
from ..core.evidence import TensorInfo, Weights
from ..core.registry import get_fix
from ..core.version import __version__
from .files import atomic_write_bytes, write_json
from .readers import META_KEY, WRAPPER_KEYS, read_checkpoint, strip_run_prefixes, torch_load


class PatchedTensors:
    """A TensorSource: the tensors of `base` with some replaced."""

    def __init__(self, base: Weights, replaced: dict[str, torch.Tensor]):
        self.base, self.replaced = base, replaced

    def names(self) -> list[str]:
        return self.base.names()

    def info(self, name: str) -> TensorInfo:
        return self.base.info(name)

    def load(self, name: str) -> torch.Tensor:
        return self.replaced[name] if name in self.replaced else self.base.tensor(name)


def patch_subject_weights(subject, names: list[str]) -> None:
    """Apply weights fixes to a live subject's model in place (its state dict is the checkpoint's)."""
    state = {k: v.detach() for k, v in subject.model.state_dict().items()}
    replaced = apply_weight_fixes(Weights.from_state_dict(state, path=subject.name), names)
    subject.model.load_state_dict(replaced, strict=False)
    subject.fixes_applied.extend(name for name in names if name not in subject.fixes_applied)


def apply_weight_fixes(weights: Weights, names: list[str]) -> dict[str, torch.Tensor]:
    """{tensor name: new tensor} after the named weights fixes, in order. InputError when one does not apply."""
    replaced: dict[str, torch.Tensor] = {}
    for name in names:
        fix = get_fix(name)()
        current = dataclasses.replace(weights, source=PatchedTensors(weights, replaced), cache={})  # fresh summaries
        reason = fix.applicable_weights(current)
        if reason:
            raise InputError(f"fix {name!r} does not apply to {weights.path}: {reason}")
        for tensor_name, tensor in fix.apply_weights(current).items():
            old = weights.info(tensor_name)
            if tuple(tensor.shape) != old.shape:
                raise RuntimeError(f"fix {name!r} changed the shape of {tensor_name} ({old.shape} -> {tuple(tensor.shape)})")
            replaced[tensor_name] = tensor.to(getattr(torch, old.dtype))
    return replaced


def patch_weights(path: str | Path, names: list[str], out: str | Path, *, trust: bool = False,
                  sha256: str | None = None) -> dict:
    """Apply weights fixes to the checkpoint at `path` and write the result to `out`; returns the manifest."""
    path, out = Path(path), Path(out)
    read = read_checkpoint(path, trust=trust)
    replaced = apply_weight_fixes(read.weights, names)
    manifest = {"tool_version": __version__, "source": str(path), "source_sha256": sha256, "format": read.format,
                "applied": list(names), "replaced": sorted(replaced)}
    if read.format == "hf-folder":
        _write_hf_folder(path, out, read.weights, replaced, manifest)
    elif read.format == "safetensors":
        _write_safetensors(read.weights, replaced, out, {**(read.weights.source.metadata or {}),
                                                        "modeldoctor_fixes": json.dumps(manifest)})
    else:
        _write_torch_file(path, out, read.format, replaced, manifest, trust)
    write_json(_manifest_path(out), manifest)
    return manifest


def _manifest_path(out: Path) -> Path:
    return out / "modeldoctor.json" if out.is_dir() else out.with_name(out.name + ".modeldoctor.json")


def _write_torch_file(path: Path, out: Path, fmt: str, replaced: dict, manifest: dict, trust: bool) -> None:
    raw = torch_load(path, trust)
    if fmt == "pickled-module":
        raise InputError(f"{path} is a pickled nn.Module: save its state_dict() and fix that instead")
    key = fmt.split(":", 1)[1] if fmt.startswith("wrapper:") else "state_dict" if fmt in ("lightning", META_KEY) else None
    if key is not None and key not in WRAPPER_KEYS + ("state_dict",):
        raise InputError(f"{path}: cannot locate the state dict to patch ({fmt})")
    state = raw if key is None else raw[key]
    if isinstance(state, torch.nn.Module):
        raise InputError(f"{path} keeps a pickled nn.Module under {key!r}: save its state_dict() and fix that instead")
    rename = strip_run_prefixes([k for k in state if isinstance(k, str)])
    for stored in list(state):
        if isinstance(stored, str) and rename(stored) in replaced:
            state[stored] = replaced[rename(stored)]
    if key is not None:  # a wrapper dict has room for what was done; a bare state dict must stay one
        raw["modeldoctor_fixes"] = manifest
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    atomic_write_bytes(out, buffer.getvalue())


def _write_safetensors(weights: Weights, replaced: dict, out: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    tensors = {name: (replaced[name] if name in replaced else weights.tensor(name)).contiguous() for name in weights.names()}
    atomic_write_bytes(out, save(tensors, metadata={str(k): str(v) for k, v in metadata.items()}))


def _write_hf_folder(folder: Path, out: Path, weights: Weights, replaced: dict, manifest: dict) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} must be a new or empty folder for a Hugging Face model folder")
    source: Any = weights.source
    shards = getattr(source, "weight_map", None)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(folder, staging)  # config, tokenizer, optimizer state, untouched shards
    try:
        single = None if shards else next(f for f in ("model.safetensors", "pytorch_model.bin") if (folder / f).is_file())
        by_file: dict[str, list[str]] = {}
        for name in weights.names():
            by_file.setdefault(shards[name] if shards else single, []).append(name)
        for file, names in by_file.items():
            if not any(name in replaced for name in names):
                continue
            tensors = {name: (replaced[name] if name in replaced else weights.tensor(name)).contiguous() for name in names}
            if file.endswith(".safetensors"):
                from safetensors.torch import save_file

                save_file(tensors, str(staging / file), metadata={"format": "pt"})
            else:
                torch.save(tensors, staging / file)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
