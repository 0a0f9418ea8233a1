"""Saving and safely loading checkpoints: every accepted format, and a clear InputError for the rest."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re

import pytest
import torch
from conftest import TINY_CONFIG
from safetensors.torch import save_file
from torch import nn

import modeldoctor
from modeldoctor.core.errors import InputError
from modeldoctor.engine.checkpoint import fit_report, load_checkpoint, read_config_file, save_checkpoint


@pytest.fixture(scope="module")
def tiny_state(tiny_checkpoint) -> dict[str, torch.Tensor]:
    return torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(model: nn.Module, state: dict) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k], state[k]) for k in own)


# --- the modeldoctor format ------------------------------------------------------------------

def test_round_trip(tiny_checkpoint, tiny_state):
    raw = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)  # no pickled code in it
    meta = raw["modeldoctor"]
    assert meta["subject"] == "sparse-field"
    assert meta["config"]["n_train_fields"] == TINY_CONFIG["n_train_fields"]
    assert meta["fixes"] == []
    assert meta["tool_version"] == modeldoctor.__version__

    loaded = load_checkpoint(tiny_checkpoint)
    assert loaded.format == "modeldoctor"
    assert loaded.subject.name == "sparse-field"
    assert loaded.subject.config["n_eval_fields"] == TINY_CONFIG["n_eval_fields"]
    assert loaded.sha256 == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert same_weights(loaded.subject.model, tiny_state)


def test_save_model_with_name_and_config(tmp_path, tiny_state):
    model = modeldoctor.build_subject("sparse-field", TINY_CONFIG).model
    model.load_state_dict(tiny_state)
    path = save_checkpoint(tmp_path / "sub" / "named.pt", model, subject="sparse-field", config=TINY_CONFIG)
    loaded = load_checkpoint(path)
    assert loaded.subject.config["n_train_fields"] == TINY_CONFIG["n_train_fields"]
    assert same_weights(loaded.subject.model, tiny_state)
    with pytest.raises(ValueError, match="subject name"):
        save_checkpoint(tmp_path / "nameless.pt", model)
    assert sorted(p.name for p in path.parent.iterdir()) == ["named.pt"]  # atomic: no temporary left behind


def test_config_override_and_recorded_fixes(tmp_path, tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint, config={"n_eval_fields": 8})
    assert loaded.subject.config["n_eval_fields"] == 8
    assert loaded.subject.config["n_train_fields"] == TINY_CONFIG["n_train_fields"]

    patched = modeldoctor.apply_fixes(loaded.subject, ["clamp-output"])
    assert loaded.subject.fixes_applied == []  # fixes act on a copy
    path = save_checkpoint(tmp_path / "patched.pt", patched)
    assert torch.load(path, weights_only=True)["modeldoctor"]["fixes"] == ["clamp-output"]
    assert load_checkpoint(path).subject.fixes_applied == ["clamp-output"]  # replayed before the weights load


# --- other formats -----------------------------------------------------------------------------

def test_plain_state_dict_with_subject(tmp_path, tiny_state):
    path = tmp_path / "plain.pt"
    torch.save(tiny_state, path)
    loaded = load_checkpoint(path, subject="sparse-field", config=TINY_CONFIG)
    assert loaded.format == "state_dict"
    assert loaded.subject.name == "sparse-field"
    assert same_weights(loaded.subject.model, tiny_state)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_wrapper_keys(tmp_path, tiny_state, key):
    path = tmp_path / f"{key}.pt"
    torch.save({key: tiny_state, "epoch": 7, "optimizer_state_dict": {"state": {}, "param_groups": []}}, path)
    loaded = load_checkpoint(path, subject="sparse-field", config=TINY_CONFIG)
    assert loaded.format == f"wrapper:{key}"
    assert same_weights(loaded.subject.model, tiny_state)


def test_module_prefix_is_stripped(tmp_path, tiny_state):
    path = tmp_path / "ddp.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in tiny_state.items()}}, path)
    loaded = load_checkpoint(path, subject="sparse-field", config=TINY_CONFIG)
    assert same_weights(loaded.subject.model, tiny_state)


def test_safetensors_without_metadata(tmp_path, tiny_state):
    path = tmp_path / "weights.safetensors"
    save_file(tiny_state, str(path))
    anonymous = load_checkpoint(path)  # no subject named: diagnosed from its weights alone
    assert anonymous.subject is None and sorted(anonymous.weights.names()) == sorted(tiny_state)
    loaded = load_checkpoint(path, subject="sparse-field", config=TINY_CONFIG)
    assert loaded.format == "safetensors"
    assert same_weights(loaded.subject.model, tiny_state)


def test_safetensors_with_modeldoctor_metadata(tmp_path, tiny_state):
    path = tmp_path / "named.safetensors"
    header = {"modeldoctor": json.dumps({"subject": "sparse-field", "config": TINY_CONFIG})}
    save_file(tiny_state, str(path), metadata=header)
    loaded = load_checkpoint(path)
    assert loaded.subject.name == "sparse-field"
    assert loaded.subject.config["n_train_fields"] == TINY_CONFIG["n_train_fields"]
    assert same_weights(loaded.subject.model, tiny_state)


def test_bad_safetensors(tmp_path, tiny_state):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(InputError, match="not a valid .safetensors"):
        load_checkpoint(junk, subject="sparse-field")
    bad_header = tmp_path / "bad-header.safetensors"
    save_file(tiny_state, str(bad_header), metadata={"modeldoctor": "{not json"})
    with pytest.raises(InputError, match="not valid JSON"):
        load_checkpoint(bad_header)


# --- what is refused, and how it is explained ---------------------------------------------------

def test_a_checkpoint_that_names_no_subject_is_read_as_weights_alone(tmp_path, tiny_state):
    path = tmp_path / "anonymous.pt"
    torch.save({"state_dict": tiny_state}, path)
    loaded = load_checkpoint(path)
    assert loaded.subject is None and loaded.format == "wrapper:state_dict"
    assert loaded.evidence.kinds() == ["weights"]
    assert torch.equal(loaded.weights.tensor("head.weight"), tiny_state["head.weight"])
    assert "--subject" in loaded.evidence.why_missing("subject")  # what the subject checks say when skipped


def test_unknown_subject(tiny_checkpoint):
    with pytest.raises(InputError, match=r"unknown subject 'nosuch'.*sparse-field"):
        load_checkpoint(tiny_checkpoint, subject="nosuch")


def test_mismatch_report_lists_keys_and_shapes(tmp_path, tiny_state):
    model = modeldoctor.build_subject("sparse-field", TINY_CONFIG).model
    assert fit_report(model, tiny_state) is None

    state = dict(tiny_state)
    del state["head.bias"]
    state["head.weight"] = torch.zeros(2, 32)
    state["decoder.extra"] = torch.zeros(3)
    report = fit_report(model, state)
    assert "missing 1: head.bias" in report
    assert "unexpected 1: decoder.extra" in report
    assert "shape mismatch 1: head.weight (2, 32) vs model (1, 32)" in report

    path = tmp_path / "misfit.pt"
    torch.save(state, path)
    with pytest.raises(InputError) as caught:
        load_checkpoint(path, subject="sparse-field", config=TINY_CONFIG)
    message = str(caught.value)
    assert "does not fit subject 'sparse-field'" in message
    assert "head.bias" in message and "decoder.extra" in message and "(2, 32) vs model (1, 32)" in message
    assert "\n" not in message


def test_mismatch_report_is_bounded(tmp_path, tiny_state):
    """A wholly different model lists a few keys and a count, not hundreds of names."""
    state = {f"other.layer{i}.weight": torch.zeros(2) for i in range(50)}
    report = fit_report(modeldoctor.build_subject("sparse-field", TINY_CONFIG).model, state)
    assert "unexpected 50:" in report and "(+46 more)" in report
    assert len(report) < 1000


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights_build_no_subject_and_say_why(tmp_path, tiny_state, bad_value):
    """NaN weights are a diagnosis (non-finite names them), not bad input; the subject checks say why they skip."""
    state = dict(tiny_state)
    state["head.weight"] = torch.full_like(state["head.weight"], bad_value)
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    loaded = load_checkpoint(path, subject="sparse-field", config=TINY_CONFIG)
    assert loaded.subject is None and loaded.weights is not None
    assert re.search(r"NaN/Inf in 1 tensor\(s\) \(head\.weight\)", loaded.evidence.why_missing("subject"))


def test_pickled_module_needs_trust(tmp_path, tiny_state):
    model = modeldoctor.build_subject("sparse-field", TINY_CONFIG).model
    model.load_state_dict(tiny_state)
    path = tmp_path / "whole-model.pt"
    torch.save(model, path)
    with pytest.raises(InputError, match="pickled Python code.*--trust-checkpoint"):
        load_checkpoint(path, subject="sparse-field", config=TINY_CONFIG)
    with pytest.warns(UserWarning, match="trust"):
        loaded = load_checkpoint(path, subject="sparse-field", config=TINY_CONFIG, trust=True)
    assert loaded.format == "pickled-module"
    assert same_weights(loaded.subject.model, tiny_state)


class RunsACommand:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_payload_is_real(tmp_path):
    """Control: the payload used below does run its command when unpickled without protection."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(RunsACommand(marker)))
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "torch.save-legacy", "pickle"])
def test_malicious_pickle_does_not_run(tmp_path, tiny_state, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": tiny_state, "extra": RunsACommand(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    elif writer == "torch.save-legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(RunsACommand(marker)))
    with pytest.raises(InputError) as caught:
        load_checkpoint(path, subject="sparse-field", config=TINY_CONFIG)
    assert not marker.exists()
    if writer.startswith("torch.save"):
        assert "pickled Python code" in str(caught.value) and "--trust-checkpoint" in str(caught.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty or truncated"),
        (os.urandom(2048), "not a PyTorch checkpoint"),
        ("truncated", "corrupt or truncated"),
        ("list", "holds a list"),
        ("no-tensors", "found no state dict"),
    ],
)
def test_unreadable_files(tmp_path, tiny_checkpoint, content, message):
    path = tmp_path / "bad.pt"
    if content == "truncated":
        data = tiny_checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    elif content == "no-tensors":
        torch.save({"epoch": 3, "notes": "hello"}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(InputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nosuch.pt")
    with pytest.raises(InputError, match="a folder without model weights"):
        load_checkpoint(tmp_path)


# --- config files ------------------------------------------------------------------------------

def test_read_config_json_and_toml(tmp_path):
    json_file = tmp_path / "cfg.json"
    json_file.write_text(json.dumps({"steps": 5, "note": "<b>", "nested": {"a": [1, 2]}}))
    assert read_config_file(json_file) == {"steps": 5, "note": "<b>", "nested": {"a": [1, 2]}}

    toml_file = tmp_path / "cfg.toml"
    toml_file.write_text('steps = 5\nlr = 0.01\nname = "x"\n\n[nested]\na = [1, 2]\n')
    assert read_config_file(toml_file) == {"steps": 5, "lr": 0.01, "name": "x", "nested": {"a": [1, 2]}}


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.json", "{steps: 5", "not valid JSON"),
        ("bad.toml", "steps = = 5", "not valid TOML"),
        ("list.json", "[1, 2]", "object/table at the top level"),
        ("binary.json", b"\xff\xfe\x00garbage", "not valid JSON"),
    ],
)
def test_read_config_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError, match=message):
        read_config_file(path)


def test_read_config_missing(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        read_config_file(tmp_path / "nosuch.toml")
