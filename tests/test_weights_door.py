"""The weights door: every checkpoint format a user has is read safely and diagnosed without a model class.

Each format is written the way its library writes it (torch.save of a state dict or a training dict,
a Lightning-shaped dict, safetensors, a Hugging Face folder, single or sharded, with Trainer state).
"""
from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import run_cli
from safetensors.torch import save_file
from torch import nn

import modeldoctor
from modeldoctor.core.errors import InputError
from modeldoctor.engine.readers import read_checkpoint


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 5)

    def forward(self, tokens):  # (B,) -> (B, 5)
        return self.head(self.body(self.embed(tokens)))


def trained(freeze_first: bool = False, steps: int = 120) -> tuple[Net, torch.optim.Optimizer]:
    """A small classifier trained with Adam on a seeded task; optionally with its first Linear never trained."""
    torch.manual_seed(0)
    model = Net()
    if freeze_first:
        model.body[0].requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    tokens = torch.randint(0, 50, (256,))
    labels = tokens % 5
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(tokens), labels).backward()
        optimizer.step()
    return model, optimizer


@pytest.fixture(scope="module")
def healthy():
    return trained()


def weight_results(report: dict) -> dict[str, dict]:
    return {r["check"]: r for r in report["results"] if r["evidence"] == "weights"}


def flagged(report: dict, check: str) -> set[str]:
    return {w for f in weight_results(report)[check]["findings"] if f["status"] != "pass" for w in f["where"]}


# --- every format reads, with the same names --------------------------------------------------------

def write_formats(folder, model: nn.Module, optimizer) -> dict:
    state = model.state_dict()
    paths = {}
    paths["state_dict"] = folder / "plain.pt"
    torch.save(state, paths["state_dict"])
    paths["training"] = folder / "training.pth"
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1000)
    torch.save({"model_state_dict": state, "optimizer_state_dict": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "epoch": 3}, paths["training"])
    paths["ddp"] = folder / "ddp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, paths["ddp"])
    paths["compiled"] = folder / "compiled.pt"
    torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, paths["compiled"])
    paths["lightning"] = folder / "epoch=2-step=30.ckpt"
    torch.save({"epoch": 2, "global_step": 30, "pytorch-lightning_version": "2.4.0",
                "state_dict": {f"model.{k}": v for k, v in state.items()},
                "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [scheduler.state_dict()],
                "hyper_parameters": {"lr": 3e-3}}, paths["lightning"])
    paths["safetensors"] = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(paths["safetensors"]))
    hf = folder / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "net", "initializer_range": 0.02}))
    save_file({k: v.contiguous() for k, v in state.items()}, str(hf / "model.safetensors"), metadata={"format": "pt"})
    paths["hf"] = hf
    sharded = folder / "hf-sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps({"model_type": "net"}))
    names = list(state)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k].contiguous() for k in part}, str(sharded / file))
        weight_map.update({k: file for k in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    torch.save(optimizer.state_dict(), sharded / "optimizer.pt")
    (sharded / "trainer_state.json").write_text(json.dumps({"global_step": 120, "epoch": 1.0}))
    paths["hf-sharded"] = sharded
    return paths


def test_every_format_reads_the_same_tensors_under_the_models_own_names(tmp_path, healthy):
    model, optimizer = healthy
    expected = model.state_dict()
    formats = {"state_dict": "state_dict", "training": "wrapper:model_state_dict", "ddp": "wrapper:state_dict",
               "compiled": "state_dict", "lightning": "lightning", "safetensors": "safetensors", "hf": "hf-folder",
               "hf-sharded": "hf-folder"}
    for key, path in write_formats(tmp_path, model, optimizer).items():
        read = read_checkpoint(path)
        names = {n.removeprefix("model.") for n in read.weights.names()}  # Lightning keeps its attribute prefix
        assert names == set(expected), key
        assert read.format == formats[key], key
        for name in expected:
            stored = name if name in read.weights.names() else f"model.{name}"
            assert torch.equal(read.weights.tensor(stored), expected[name]), (key, name)


def test_training_state_is_kept_beside_the_weights(tmp_path, healthy):
    paths = write_formats(tmp_path, *healthy)
    training = read_checkpoint(paths["training"]).weights
    assert training.optimizer["param_groups"][0]["lr"] == 3e-3 and training.scheduler["step_size"] == 1000
    assert training.extra == {"epoch": 3}
    lightning = read_checkpoint(paths["lightning"]).weights
    assert lightning.optimizer is not None and lightning.scheduler["step_size"] == 1000
    assert lightning.extra["global_step"] == 30 and lightning.extra["optimizers"] == 1
    hf = read_checkpoint(paths["hf-sharded"]).weights
    assert hf.optimizer is not None and hf.extra["global_step"] == 120 and "hf_config" in hf.extra


def test_torch_files_are_memory_mapped_and_shards_open_only_when_read(tmp_path, healthy, monkeypatch):
    paths = write_formats(tmp_path, *healthy)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: calls.append(kwargs) or real_load(*args, **kwargs))
    read_checkpoint(paths["state_dict"])
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]  # mapped, never unpickling code
    monkeypatch.undo()
    sharded = read_checkpoint(paths["hf-sharded"]).weights.source
    assert sharded._shards == {}
    sharded.load("head.weight")
    assert len(sharded._shards) == 1


@pytest.mark.parametrize(("index", "message"), [
    ({"weight_map": {"head.weight": "../outside.safetensors"}}, "not a file name inside the folder"),
    ({"weight_map": {"head.weight": "absent.safetensors"}}, "not there: absent.safetensors"),
    ({"weight_map": []}, "no weight_map"),
])
def test_a_bad_shard_index_is_refused_with_one_line(tmp_path, index, message):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match=re.escape(message)) as caught:
        read_checkpoint(tmp_path)
    assert "\n" not in str(caught.value)


# --- what the "done when" asks ----------------------------------------------------------

def test_a_plain_state_dict_whose_first_layer_never_trained_is_caught_by_name(tmp_path):
    model, _ = trained(freeze_first=True)
    path = tmp_path / "frozen-first.pt"
    torch.save(model.state_dict(), path)
    report = modeldoctor.diagnose(path)
    assert report["evidence"] == ["weights"]
    assert weight_results(report)["untrained-layers"]["status"] == "fail"
    assert flagged(report, "untrained-layers") & {"body.0", "body.0.weight"}
    layer = next(row for row in report["weights"]["layers"] if row["name"] == "body.0")
    assert layer["flags"]["untrained-layers"] == "fail" and report["weights"]["layers"][0]["worst"] == "fail"


def test_a_training_checkpoint_whose_optimizer_never_covered_a_layer_is_caught_by_name(tmp_path):
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.Adam(list(model.body.parameters()) + list(model.head.parameters()), lr=3e-3)  # no embed
    tokens = torch.randint(0, 50, (256,))
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(tokens), tokens % 5).backward()
        optimizer.step()
    path = tmp_path / "uncovered.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1}, path)
    report = modeldoctor.diagnose(path)
    result = weight_results(report)["optimizer-state"]
    assert result["status"] == "fail"
    assert "embed.weight" in flagged(report, "optimizer-state")


def test_a_healthy_training_checkpoint_passes_every_weight_check(tmp_path, healthy):
    paths = write_formats(tmp_path, *healthy)
    for key in ("training", "lightning", "hf-sharded"):
        report = modeldoctor.diagnose(paths[key])
        bad = {slug: r["summary"] for slug, r in weight_results(report).items() if r["status"] in ("fail", "error")}
        assert not bad, (key, bad)


def test_against_a_base_reports_tensors_that_did_not_change(tmp_path):
    torch.manual_seed(0)
    base = Net()
    torch.save(base.state_dict(), tmp_path / "init.pt")
    tuned = Net()
    tuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in tuned.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(tuned.state_dict(), tmp_path / "tuned.pt")
    report = modeldoctor.diagnose(tmp_path / "tuned.pt", against=tmp_path / "init.pt", checks=["untrained-layers"])
    assert report["weights"]["against"].endswith("init.pt")
    assert flagged(report, "untrained-layers") & {"body.0.weight", "body.0"}
    assert not flagged(report, "untrained-layers") & {"head.weight", "head"}


def test_weights_and_subject_checks_run_together_when_the_subject_is_known(tiny_checkpoint):
    report = modeldoctor.diagnose(tiny_checkpoint, checks=["non-finite", "query-coverage"])
    assert report["evidence"] == ["subject", "weights"]
    assert [r["status"] for r in report["results"]] != ["skip", "skip"]
    assert {r["evidence"] for r in report["results"]} == {"subject", "weights"}
    assert report["weights"]["tensors"] > 0


def test_non_finite_weights_of_a_named_subject_are_reported_not_refused(tmp_path, tiny_checkpoint):
    raw = torch.load(tiny_checkpoint, weights_only=True)
    raw["state_dict"]["head.weight"] = torch.full_like(raw["state_dict"]["head.weight"], float("nan"))
    torch.save(raw, tmp_path / "nan.pt")
    report = modeldoctor.diagnose(tmp_path / "nan.pt", checks=["non-finite", "mean-collapse"])
    by_check = {r["check"]: r for r in report["results"]}
    assert by_check["non-finite"]["status"] == "fail" and "head.weight" in flagged(report, "non-finite")
    assert by_check["mean-collapse"]["status"] == "skip" and "NaN/Inf" in by_check["mean-collapse"]["summary"]


# --- the command line, on a user's own file -----------------------------------------------------

def test_the_readme_command_works_on_a_users_own_state_dict_and_fix_writes_a_new_file(tmp_path, healthy):
    model, _ = healthy
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["body.0.weight"][:20] = 0  # 20 of 64 units of the first layer dead
    state["body.0.bias"][:20] = 0
    torch.save(state, tmp_path / "mine.pt")
    before = (tmp_path / "mine.pt").read_bytes()
    run = run_cli("diagnose", "mine.pt", "--json", "report.json", "--html", "report.html", cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "dead-units" in run.stdout and "body.0" in run.stdout and "Traceback" not in run.stderr
    assert "--apply reinit-dead-units --out patched.pt" in run.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["weights"]["layers"][0]["name"] == "body.0"
    html = (tmp_path / "report.html").read_text()
    assert "Layers × checks" in html and 'class="heat fail"' in html

    fixed = run_cli("fix", "mine.pt", "--apply", "reinit-dead-units", "--out", "patched.pt", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert (tmp_path / "mine.pt").read_bytes() == before  # the input is never written to
    assert json.loads((tmp_path / "patched.pt.modeldoctor.json").read_text())["applied"] == ["reinit-dead-units"]
    patched = torch.load(tmp_path / "patched.pt", weights_only=True)
    assert set(patched) == set(state)  # still a plain state dict the user's code loads
    again = run_cli("diagnose", "patched.pt", "--checks", "dead-units", cwd=tmp_path)
    assert again.returncode == 0, again.stdout


def test_fix_keeps_the_format_of_safetensors_and_hugging_face_folders(tmp_path, healthy):
    model, optimizer = healthy
    with torch.no_grad():
        dead = Net()
        dead.load_state_dict(model.state_dict())
        dead.body[0].weight[:16] = 0
    paths = write_formats(tmp_path, dead, optimizer)
    from modeldoctor.engine.weight_fixes import patch_weights

    patch_weights(paths["safetensors"], ["reinit-dead-units"], tmp_path / "patched.safetensors")
    read = read_checkpoint(tmp_path / "patched.safetensors")
    assert json.loads(read.weights.source.metadata["modeldoctor_fixes"])["applied"] == ["reinit-dead-units"]
    assert read.weights.tensor("body.0.weight")[:16].abs().sum() > 0
    patch_weights(paths["hf-sharded"], ["reinit-dead-units"], tmp_path / "patched-hf")
    out = read_checkpoint(tmp_path / "patched-hf")
    assert out.format == "hf-folder" and out.weights.optimizer is not None  # the Trainer state is copied too
    assert out.weights.tensor("body.0.weight")[:16].abs().sum() > 0
    assert (tmp_path / "patched-hf" / "modeldoctor.json").is_file()


def test_subject_fixes_on_a_checkpoint_without_a_subject_are_one_clear_line(tmp_path, healthy):
    torch.save(healthy[0].state_dict(), tmp_path / "mine.pt")
    run = run_cli("fix", "mine.pt", "--apply", "clamp-output", "--out", "out.pt", cwd=tmp_path)
    assert run.returncode == 2 and "--subject" in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_tensors_no_check_can_read_are_left_out_with_a_note_and_a_file_of_only_those_is_refused(tmp_path):
    torch.save({"w": torch.randn(8, 8).to_sparse(), "dense.weight": torch.randn(40, 40)}, tmp_path / "mixed.pt")
    report = modeldoctor.diagnose(tmp_path / "mixed.pt", checks=["non-finite"])
    assert report["weights"]["tensors"] == 1 and "w (sparse_coo)" in report["weights"]["notes"][0]
    assert report["results"][0]["status"] == "pass"
    torch.save({"w": torch.randn(8, 8).to_sparse()}, tmp_path / "sparse.pt")
    with pytest.raises(InputError, match="none of its tensors can be read"):
        read_checkpoint(tmp_path / "sparse.pt")


def test_save_checkpoint_keeps_the_optimizer_so_the_weight_and_subject_checks_run_together(tmp_path):
    subject = modeldoctor.build_subject("sparse-field", {"n_train_fields": 16, "n_eval_fields": 8})
    head_only = torch.optim.Adam(subject.model.head.parameters(), lr=1e-3)  # the rest never in the optimizer
    scheduler = torch.optim.lr_scheduler.StepLR(head_only, step_size=10)
    path = modeldoctor.save_checkpoint(tmp_path / "ckpt.pt", subject, optimizer=head_only, scheduler=scheduler)
    loaded = modeldoctor.load_checkpoint(path)
    assert loaded.subject is not None and loaded.weights.scheduler["step_size"] == 10
    report = modeldoctor.diagnose(loaded, checks=["optimizer-state"])
    assert report["results"][0]["status"] == "fail"
    assert "encoder.layers.0.linear1.weight" in flagged(report, "optimizer-state")
