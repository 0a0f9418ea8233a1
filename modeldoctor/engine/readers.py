"""Readers: every checkpoint a user already has, as `Weights`, one tensor at a time and without running code.

    read_checkpoint("model.pt")              # state dict, training checkpoint, Lightning .ckpt, modeldoctor file
    read_checkpoint("model.safetensors")     # read lazily, tensor by tensor
    read_checkpoint("hf-model/")             # config.json + model.safetensors, a sharded index, or pytorch_model.bin

Torch files are opened with `torch.load(weights_only=True, mmap=True)`: the tensors stay in the file
until a check reads them, so a scan's peak memory is near the largest tensor plus the pages it has
touched, not the whole file. Safetensors files and shards are read with `safe_open`, which never runs
code and reads only the tensor asked for. Pickled code loads only with `trust=True`.

What a training checkpoint keeps beside its weights is kept too: the optimizer and LR scheduler state
(`optimizer`/`optimizer_state_dict`/`optim`, `lr_scheduler`/`scheduler`; Lightning's
`optimizer_states`/`lr_schedulers`; a Hugging Face Trainer folder's `optimizer.pt`/`scheduler.pt`) and
plain entries such as `epoch` and `global_step`. Wrapper prefixes that only say how the model was run
(`module.` of DataParallel/DDP, `_orig_mod.` of `torch.compile`) are dropped from the names.
"""
from __future__ import annotations

import json
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..core.errors import InputError
from ..core.evidence import InMemoryTensors, TensorInfo, Weights

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim", "optimizer_state")
SCHEDULER_KEYS = ("lr_scheduler", "scheduler", "scheduler_state_dict", "lr_scheduler_state_dict")
META_KEY = "modeldoctor"
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class ReadCheckpoint:
    """What a checkpoint holds: its weights, modeldoctor metadata (subject, config, fixes) if any, its format."""

    weights: Weights
    meta: dict = field(default_factory=dict)
    format: str = ""  # modeldoctor | state_dict | wrapper:<key> | lightning | safetensors | hf-folder | pickled-module
    notes: list[str] = field(default_factory=list)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


# --- torch files -------------------------------------------------------------------------------

def _starts_like_zip(path: Path) -> bool:
    """A (possibly truncated) zip, i.e. a torch.save file: a cut-off one has no central directory for is_zipfile."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04" or zipfile.is_zipfile(path)


def torch_load(path: Path, trust: bool = False) -> Any:
    """`torch.load` of an untrusted file: weights only, memory-mapped when the format allows it."""
    if trust:
        warnings.warn(
            f"loading {path} with --trust-checkpoint: pickled code in it will run. Only do this for files you trust.",
            stacklevel=3,
        )
        try:
            return torch.load(path, map_location="cpu", weights_only=False)  # only here, under --trust-checkpoint
        except Exception as error:
            raise InputError(f"{path}: could not load even as a trusted pickle: {type(error).__name__}: {first_line(error)}") from error
    try:
        if _starts_like_zip(path):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-1.6) format: no mmap
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
            raise InputError(f"{path} is a corrupt or truncated PyTorch checkpoint: {first_line(error)}") from error
        raise InputError(f"{path} is not a PyTorch checkpoint (unreadable or corrupt data)") from error


def _tensor_entries(value: Any) -> dict[str, torch.Tensor] | None:
    """The tensors of a state dict (a dict of mostly tensors with string keys), or None if it is not one."""
    if not isinstance(value, dict) or not value:
        return None
    tensors = {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    # `_extra_state` entries and the odd plain value do not stop a dict from being a state dict.
    return tensors if tensors and len(tensors) >= 0.5 * len(value) else None


def _first_dict(raw: dict, keys: tuple[str, ...]) -> dict | None:
    return next((raw[k] for k in keys if isinstance(raw.get(k), dict)), None)


def _first_of_list(value: Any) -> dict | None:
    return value[0] if isinstance(value, list) and value and isinstance(value[0], dict) else None


def _plain_entries(raw: dict) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, (int, float, str, bool))}


def unwrap(raw: Any, path: Path) -> tuple[dict, dict[str, torch.Tensor], str, dict]:
    """(modeldoctor metadata, state dict, format, training state) from whatever torch.load returned.

    The training state holds `optimizer`, `scheduler` and `extra` for `Weights`.
    """
    if isinstance(raw, nn.Module):
        return {}, raw.state_dict(), "pickled-module", {}
    if not isinstance(raw, dict):
        raise InputError(f"{path} holds a {type(raw).__name__}, not a state dict or a checkpoint dict")
    if META_KEY in raw:
        state = _tensor_entries(raw.get("state_dict"))
        if not isinstance(raw[META_KEY], dict) or state is None:
            raise InputError(f"{path}: malformed modeldoctor checkpoint (metadata must be a dict and state_dict hold tensors)")
        return dict(raw[META_KEY]), state, "modeldoctor", _training_state(raw)
    if "pytorch-lightning_version" in raw or "optimizer_states" in raw:
        state = _tensor_entries(raw.get("state_dict"))
        if state is None:
            raise InputError(f"{path}: a Lightning checkpoint without a state_dict of tensors")
        extra = {**_plain_entries(raw), "optimizers": len(raw.get("optimizer_states") or [])}
        return {}, state, "lightning", {"optimizer": _first_of_list(raw.get("optimizer_states")),
                                        "scheduler": _lightning_scheduler(raw.get("lr_schedulers")), "extra": extra}
    for key in WRAPPER_KEYS:
        inner = raw.get(key)
        if isinstance(inner, nn.Module):
            return {}, inner.state_dict(), f"wrapper:{key}", _training_state(raw)
        state = _tensor_entries(inner)
        if state is not None:
            return {}, state, f"wrapper:{key}", _training_state(raw)
    state = _tensor_entries(raw)
    if state is not None:
        return {}, state, "state_dict", {}
    keys = ", ".join(sorted(map(str, raw))[:8])
    raise InputError(f"{path}: found no state dict (looked for {', '.join(WRAPPER_KEYS)} or tensors at the top; keys: {keys})")


def _training_state(raw: dict) -> dict:
    return {"optimizer": _first_dict(raw, OPTIMIZER_KEYS), "scheduler": _first_dict(raw, SCHEDULER_KEYS),
            "extra": _plain_entries(raw)}


def _lightning_scheduler(entries: Any) -> dict | None:
    """Lightning keeps each scheduler's state_dict as an entry of `lr_schedulers` (a list of dicts)."""
    first = _first_of_list(entries)
    return first.get("scheduler", first) if first else None  # older versions nest it under "scheduler"


def strip_run_prefixes(names: list[str]) -> Callable[[str], str]:
    """A renamer that drops `_orig_mod.` components and a `module.` prefix carried by every name."""
    every_module = bool(names) and all(name.startswith("module.") for name in names)

    def rename(name: str) -> str:
        if every_module:
            name = name[len("module."):]
        return re.sub(r"(^|\.)_orig_mod\.", r"\1", name)

    return rename


def _renamed(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    rename = strip_run_prefixes(list(state))
    renamed = {rename(name): tensor for name, tensor in state.items()}
    if len(renamed) < len(state):  # two names became one: keep the originals
        return state, []
    dropped = sorted({old[: len(old) - len(new)] for old, new in zip(state, renamed) if old != new} - {""})
    return renamed, [f"dropped the wrapper prefix {', '.join(repr(p) for p in dropped[:3])} from tensor names"] if dropped else []


def _dense_only(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The dense tensors, and a note naming the others (sparse, quantized, meta), which no check can read.

    They are left out rather than converted: a sparse tensor's dense form can be far larger than the file.
    """
    def kind(tensor: torch.Tensor) -> str | None:
        if tensor.layout != torch.strided:
            return str(tensor.layout).removeprefix("torch.")
        if tensor.is_quantized:
            return "quantized"
        return "meta" if tensor.device.type == "meta" else None

    odd = {name: kind(tensor) for name, tensor in state.items() if kind(tensor)}
    if not odd:
        return state, []
    listed = ", ".join(f"{name} ({what})" for name, what in list(odd.items())[:4]) + (" and more" if len(odd) > 4 else "")
    return ({name: tensor for name, tensor in state.items() if name not in odd},
            [f"left out {len(odd)} tensor(s) the weight checks cannot read: {listed}"])


def read_torch_file(path: Path, trust: bool = False) -> ReadCheckpoint:
    raw = torch_load(path, trust)
    meta, state, fmt, beside = unwrap(raw, path)
    state, left_out = _dense_only(state)
    if not state:
        raise InputError(f"{path}: none of its tensors can be read by the weight checks ({left_out[0].split(': ', 1)[1]})")
    state, notes = _renamed(state)
    notes += left_out
    weights = Weights(source=InMemoryTensors(state), path=str(path), format=fmt, **beside)
    return ReadCheckpoint(weights, meta, fmt, notes)


# --- safetensors and Hugging Face folders ---------------------------------------------------------

def natural_key(name: str) -> list:
    """"layers.2.w" before "layers.10.w": numbers compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class SafetensorsTensors:
    """A TensorSource over one .safetensors file: the header is read at open, each tensor when asked for.

    The format does not keep the order the model listed its tensors in (the writer sorts them), so
    names come in natural order ("layers.2" before "layers.10"), which keeps a layer's tensors together.
    """

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        try:
            self._file = safe_open(str(path), framework="pt")
            self._names = sorted(self._file.keys(), key=natural_key)
            self.metadata = self._file.metadata() or {}
        except Exception as error:
            raise InputError(f"{path} is not a valid .safetensors file: {first_line(error)}") from error

    def names(self) -> list[str]:
        return list(self._names)

    def info(self, name: str) -> TensorInfo:
        view = self._file.get_slice(name)
        return TensorInfo(name, tuple(view.get_shape()), _safetensors_dtype(view.get_dtype()))

    def load(self, name: str) -> torch.Tensor:
        return self._file.get_tensor(name)


SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                      "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64"}


def _safetensors_dtype(code: str) -> str:
    return SAFETENSORS_DTYPES.get(code, code.lower())


class ShardedTensors:
    """A TensorSource over the shards of a Hugging Face folder; a shard is opened when one of its tensors is read."""

    def __init__(self, folder: Path, weight_map: dict[str, str], open_shard: Callable[[Path], Any]):
        self.folder, self.weight_map, self._open = folder, weight_map, open_shard
        self._names = sorted(weight_map, key=natural_key)
        self._shards: dict[str, Any] = {}

    def _shard(self, name: str) -> Any:
        file = self.weight_map[name]
        if file not in self._shards:
            self._shards[file] = self._open(self.folder / file)
        return self._shards[file]

    def names(self) -> list[str]:
        return list(self._names)

    def info(self, name: str) -> TensorInfo:
        return self._shard(name).info(name)

    def load(self, name: str) -> torch.Tensor:
        return self._shard(name).load(name)


def read_safetensors(path: Path) -> ReadCheckpoint:
    source = SafetensorsTensors(path)
    try:
        meta = json.loads(source.metadata[META_KEY]) if META_KEY in source.metadata else {}
    except ValueError as error:
        raise InputError(f"{path}: the {META_KEY!r} header metadata is not valid JSON: {error}") from error
    if not isinstance(meta, dict):
        raise InputError(f"{path}: the {META_KEY!r} header metadata must be a JSON object")
    return ReadCheckpoint(Weights(source=source, path=str(path), format="safetensors"), meta, "safetensors")


def _torch_shard(path: Path) -> InMemoryTensors:
    _, state, _, _ = unwrap(torch_load(path), path)
    return InMemoryTensors(_dense_only(state)[0])


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not valid JSON: {first_line(error)}") from error
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object")
    return data


def _weight_map(folder: Path, index_file: Path) -> dict[str, str]:
    """The index's tensor -> shard map, refusing shards outside the folder or missing from it."""
    weight_map = _read_json(index_file).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{index_file}: no weight_map of tensor names to shard files")
    for name, file in weight_map.items():
        if not isinstance(file, str) or Path(file).name != file:
            raise InputError(f"{index_file}: shard {file!r} of {name!r} is not a file name inside the folder")
    missing = sorted({file for file in weight_map.values() if not (folder / file).is_file()})
    if missing:
        raise InputError(f"{folder}: the index names shard(s) that are not there: {', '.join(missing[:4])}")
    return weight_map


def read_hf_folder(folder: Path) -> ReadCheckpoint:
    """A Hugging Face model folder (`save_pretrained`), or a Trainer checkpoint folder with optimizer state."""
    present = [name for name in HF_WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        raise InputError(f"{folder} is a folder without model weights (looked for {', '.join(HF_WEIGHT_FILES)})")
    weight_file = folder / present[0]
    notes = []
    if weight_file.name == "model.safetensors":
        source: Any = SafetensorsTensors(weight_file)
    elif weight_file.name == "pytorch_model.bin":
        source = _torch_shard(weight_file)
    else:
        opener = SafetensorsTensors if weight_file.name.startswith("model.safetensors") else _torch_shard
        source = ShardedTensors(folder, _weight_map(folder, weight_file), opener)
        notes.append(f"sharded: {len(set(source.weight_map.values()))} shards, read one tensor at a time")
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if not config:
        notes.append("no config.json beside the weights")
    extra: dict[str, Any] = {"hf_config": config} if config else {}
    if (folder / "trainer_state.json").is_file():
        state = _read_json(folder / "trainer_state.json")
        extra.update({k: state[k] for k in ("global_step", "epoch", "max_steps") if isinstance(state.get(k), (int, float))})
    optimizer = torch_load(folder / "optimizer.pt") if (folder / "optimizer.pt").is_file() else None
    scheduler = torch_load(folder / "scheduler.pt") if (folder / "scheduler.pt").is_file() else None
    weights = Weights(source=source, optimizer=optimizer if isinstance(optimizer, dict) else None,
                      scheduler=scheduler if isinstance(scheduler, dict) else None, extra=extra,
                      path=str(folder), format="hf-folder")
    return ReadCheckpoint(weights, {}, "hf-folder", notes)


def read_checkpoint(path: str | Path, *, trust: bool = False) -> ReadCheckpoint:
    """Any supported checkpoint as Weights. Every problem is an InputError with one clear line."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint not found: {path}")
    if path.is_dir():
        return read_hf_folder(path)
    if not path.is_file():
        raise InputError(f"checkpoint is not a file: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_torch_file(path, trust)
