"""The weight checks on healthy trained checkpoints of many architectures: no `fail`, no `error`.

The corpus (`weights_corpus.py`) trains each model briefly on a synthetic task; each is saved the ways
people save models (a state dict, a training checkpoint with optimizer and scheduler state, a
safetensors file, a Lightning .ckpt, Hugging Face `save_pretrained` folders) and diagnosed from the file
alone, with no model class. Then faults planted in corpus models must be caught by the right check,
naming the right tensor.
"""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_model
from torch import nn
from weights_corpus import BUILDERS, HF_BUILDERS, corpus, hf_corpus

import modeldoctor
from modeldoctor.core.registry import CHECKS, load_plugins

load_plugins()
WEIGHT_CHECKS = [slug for slug, check in CHECKS.items() if check.needs == "weights"]
FORMATS = ("state_dict", "checkpoint", "safetensors", "lightning")
HF_FORMATS = ("hf-folder", "hf-trainer")
# Opt-in checks are switched on here: a false alarm is a bug whether or not a user asked for the check.
OPTIONS = {slug: {"enabled": True} for slug in WEIGHT_CHECKS if "enabled" in CHECKS[slug].default_options}


def training_state(built) -> dict:
    return {"optimizer": built.optimizer.state_dict(),
            "lr_scheduler": built.scheduler.state_dict() if built.scheduler is not None else None}


def save(built, fmt: str, folder) -> str:
    """Write `built` in format `fmt` under `folder`; the path to diagnose."""
    folder.mkdir(parents=True, exist_ok=True)
    state = built.model.state_dict()
    if fmt == "state_dict":
        torch.save(state, folder / "model.pt")
        return str(folder / "model.pt")
    if fmt == "checkpoint":
        torch.save({"model": state, **training_state(built), "epoch": 3}, folder / "checkpoint.pt")
        return str(folder / "checkpoint.pt")
    if fmt == "safetensors":
        save_model(built.model, str(folder / "model.safetensors"))  # drops the duplicates of tied weights
        return str(folder / "model.safetensors")
    if fmt == "lightning":
        train = training_state(built)
        torch.save({"state_dict": {f"model.{name}": value for name, value in state.items()},
                    "optimizer_states": [train["optimizer"]],
                    "lr_schedulers": [train["lr_scheduler"]] if train["lr_scheduler"] else [],
                    "epoch": 3, "global_step": 300, "pytorch-lightning_version": "2.4.0"}, folder / "last.ckpt")
        return str(folder / "last.ckpt")
    if fmt in HF_FORMATS:
        built.model.save_pretrained(folder)
        if fmt == "hf-trainer":  # a Trainer checkpoint-N folder keeps the optimizer and scheduler beside the model
            torch.save(built.optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(built.scheduler.state_dict(), folder / "scheduler.pt")
        return str(folder)
    raise ValueError(fmt)


def problems(report: dict) -> list[str]:
    return [f"{r['check']}: {r['status']}: {r['summary']} where={[w for f in r['findings'] for w in f['where']][:8]}"
            for r in report["results"] if r["status"] in ("fail", "error")]


# --- no false alarms -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """save(name, fmt) -> path, building the corpus once."""
    root = tmp_path_factory.mktemp("weights-corpus")
    return lambda name, fmt: save((corpus() | (hf_corpus() if name in HF_BUILDERS else {}))[name], fmt,
                                  root / name / fmt)


def test_the_weight_checks_are_registered():
    expected = {"non-finite", "dead-units", "untrained-layers", "optimizer-state", "weight-collapse", "spectral-shape"}
    assert expected <= set(WEIGHT_CHECKS), sorted(expected - set(WEIGHT_CHECKS))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_no_false_alarm_on_healthy_checkpoint(saved, name, fmt):
    report = modeldoctor.diagnose(saved(name, fmt), checks=WEIGHT_CHECKS, options=OPTIONS)
    found = problems(report)
    assert not found, f"{name} ({fmt}):\n" + "\n".join(found)


@pytest.mark.parametrize("fmt", HF_FORMATS)
@pytest.mark.parametrize("name", list(HF_BUILDERS))
def test_no_false_alarm_on_hugging_face_folder(saved, name, fmt):
    pytest.importorskip("transformers")
    report = modeldoctor.diagnose(saved(name, fmt), checks=WEIGHT_CHECKS, options=OPTIONS)
    found = problems(report)
    assert not found, f"{name} ({fmt}):\n" + "\n".join(found)


# --- planted faults are caught, naming the tensor -----------------------------------------------------

def failing(report: dict, check: str) -> list[str]:
    """The `where` of the non-pass findings of `check`, asserting that it failed."""
    results = [r for r in report["results"] if r["check"] == check]
    assert results, f"{check} did not run (registered weight checks: {WEIGHT_CHECKS})"
    (result,) = results
    assert result["status"] == "fail", f"{check}: {result['status']}: {result['summary']}"
    return [w for f in result["findings"] if f["status"] != "pass" for w in f["where"]]


def names_module(where: list[str], module: str) -> bool:
    return any(w == module or w.startswith(module + ".") for w in where)


def state_copy(built) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in built.model.state_dict().items()}


def test_a_layer_left_at_init_is_untrained(tmp_path):
    built = corpus()["transformer-encoder"]
    state = state_copy(built)
    torch.manual_seed(123)
    out_features, in_features = state["encoder.layers.0.linear2.weight"].shape
    fresh = nn.Linear(in_features, out_features)  # what the layer was before training
    state["encoder.layers.0.linear2.weight"], state["encoder.layers.0.linear2.bias"] = fresh.weight.detach(), fresh.bias.detach()
    torch.save(state, tmp_path / "model.pt")
    where = failing(modeldoctor.diagnose(str(tmp_path / "model.pt"), checks=WEIGHT_CHECKS, options=OPTIONS), "untrained-layers")
    assert names_module(where, "encoder.layers.0.linear2"), where


def test_a_layer_that_moved_too_little_to_tell_from_its_init_is_caught_against_the_base(tmp_path):
    """In the healthy preln MLP the trained `stem` still passes the init tests (D 0.027, p 0.22), so a stem
    that never trained cannot be told from it by its values: `--against` the initial weights tells."""
    built = corpus()["preln-gelu-mlp"]
    state = state_copy(built)
    torch.manual_seed(123)
    fresh = nn.Linear(24, 64)
    initial = {**state, "stem.weight": fresh.weight.detach().clone(), "stem.bias": fresh.bias.detach().clone()}
    state["stem.weight"], state["stem.bias"] = initial["stem.weight"], initial["stem.bias"]
    for name in initial:  # the other tensors did train: their initial values differ
        if not name.startswith("stem."):
            initial[name] = initial[name] + 0.05 * torch.randn_like(initial[name]) if initial[name].is_floating_point() else initial[name]
    torch.save(state, tmp_path / "model.pt")
    torch.save(initial, tmp_path / "init.pt")
    report = modeldoctor.diagnose(str(tmp_path / "model.pt"), against=str(tmp_path / "init.pt"), checks=["untrained-layers"])
    result = report["results"][0]
    assert result["status"] in ("warn", "fail"), result["summary"]
    where = [w for f in result["findings"] if f["status"] != "pass" for w in f["where"]]
    assert names_module(where, "stem") and not [w for w in where if not w.startswith("stem")], where


def test_zeroed_rows_are_dead_units(tmp_path):
    built = corpus()["mlp-relu-sgd"]
    state = state_copy(built)
    state["2.weight"][:16] = 0.0  # 16 of the 64 hidden units of the second layer can never fire
    state["2.bias"][:16] = 0.0
    torch.save(state, tmp_path / "model.pt")
    where = failing(modeldoctor.diagnose(str(tmp_path / "model.pt"), checks=WEIGHT_CHECKS, options=OPTIONS), "dead-units")
    assert names_module(where, "2"), where


def test_nan_in_a_tensor_is_non_finite(tmp_path):
    built = corpus()["convnet-bn"]
    state = state_copy(built)
    state["3.weight"][0, 0, 1, 1] = float("nan")
    save_path = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(save_path))
    where = failing(modeldoctor.diagnose(str(save_path), checks=WEIGHT_CHECKS, options=OPTIONS), "non-finite")
    assert "3.weight" in where, where


def test_optimizer_over_only_the_head_is_caught(tmp_path):
    built = corpus()["transformer-encoder"]
    model = copy.deepcopy(built.model)
    head = torch.optim.Adam(model.cls.parameters(), lr=1e-3)  # the bug: the backbone is in no param group
    tokens = torch.randint(16, (32, 12), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        head.zero_grad()
        model(tokens).logsumexp(-1).mean().backward()
        head.step()
    torch.save({"model": model.state_dict(), "optimizer": head.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    where = failing(modeldoctor.diagnose(str(tmp_path / "ckpt.pt"), checks=WEIGHT_CHECKS, options=OPTIONS), "optimizer-state")
    assert names_module(where, "encoder.layers.0") and not names_module(where, "cls"), where
