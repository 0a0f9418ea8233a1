"""warmup-cosine, grad-clip and dropout: each does what its doc says, helps where it should, survives a checkpoint."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from modeldoctor import (
    InputError,
    Recipe,
    apply_fixes,
    build_subject,
    load_checkpoint,
    regression_subject,
    save_checkpoint,
)
from modeldoctor.engine.casebook import load_cases
from modeldoctor.fixes.warmup_cosine import warmup_steps_for
from modeldoctor.probes.training import TrainMonitor, seed_everything, train

CASES, _ = load_cases(Path(__file__).resolve().parents[1] / "checks" / "lr-range")
TINY = {"n_train_fields": 64, "n_eval_fields": 16, "steps": 20}


def final_loss(subject, fixes, seed=0):
    """Bench-like: same subject, same seed, same budget; mean loss over the last 10 steps."""
    patched = apply_fixes(subject, fixes)
    seed_everything(seed)
    return sum(train(patched).losses[-10:]) / 10


# --- warmup-cosine ------------------------------------------------------------------------------

def test_warmup_cosine_changes_the_lr_actually_applied():
    subject = apply_fixes(CASES["sensible_lr"](), ["warmup-cosine"])
    recipe = subject.recipe
    assert (recipe.schedule, recipe.warmup_steps, recipe.min_lr_ratio) == ("warmup-cosine", 10, 0.1)
    peak, lrs = recipe.lr, train(subject, 100).lrs
    warmup, decay = lrs[:10], lrs[9:]
    assert warmup == sorted(warmup) and warmup[0] == pytest.approx(peak / 10) and warmup[-1] == pytest.approx(peak)
    assert decay == sorted(decay, reverse=True)
    assert lrs[-1] == pytest.approx(0.1 * peak, rel=0.02)
    assert set(train(CASES["sensible_lr"](), 5).lrs) == {peak}, "the original recipe keeps its constant LR"


def test_warmup_rule_and_applicability():
    assert warmup_steps_for("adam", 100) == 10 and warmup_steps_for("sgd", 5) == 1
    assert warmup_steps_for("adam", 100_000) == 2000  # 2 / (1 - beta2) for beta2 = 0.999
    assert warmup_steps_for("sgd", 100_000) == 10_000
    data = (torch.zeros(2, 1), torch.zeros(2, 1))
    scheduled = regression_subject("x", nn.Linear(1, 1), data, data,
                                   recipe=Recipe(schedule="warmup-cosine", warmup_steps=5))
    with pytest.raises(InputError, match="already warms up"):
        apply_fixes(scheduled, ["warmup-cosine"])
    declared = regression_subject("y", nn.Linear(1, 1), data, data, recipe=Recipe(warmup_steps=7, steps=100))
    assert apply_fixes(declared, ["warmup-cosine"]).recipe.warmup_steps == 7, "a declared warmup length is kept"


def test_warmup_cosine_tames_a_far_too_high_adam_lr():
    subject = CASES["adam_lr_far_too_high"]()
    for seed in (0, 1):
        baseline, patched = final_loss(subject, [], seed), final_loss(subject, ["warmup-cosine"], seed)
        assert math.isfinite(patched) and patched < baseline / 3, (seed, baseline, patched)


# --- grad-clip ----------------------------------------------------------------------------------

class NormWatcher(TrainMonitor):
    """Global gradient norm before clipping (after backward) and as the optimizer saw it (after step)."""

    def __init__(self):
        self.raw, self.seen = [], []

    @staticmethod
    def norm(model):
        norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack(norms)).item()

    def after_backward(self, step, loss, model):
        self.raw.append(self.norm(model))
        return True

    def after_step(self, step, model, optimizer):
        self.seen.append(self.norm(model))


def test_grad_clip_caps_the_global_gradient_norm_the_optimizer_sees():
    torch.manual_seed(0)
    x = torch.rand(64, 4)
    subject = regression_subject("huge", nn.Linear(4, 1), (x, 1000 * x.sum(1, keepdim=True)), (x, x[:, :1]),
                                 recipe=Recipe(optimizer="sgd", lr=1e-6, steps=5))
    patched = apply_fixes(subject, ["grad-clip"])
    assert patched.recipe.grad_clip == 1.0 and subject.recipe.grad_clip is None
    watcher = NormWatcher()
    train(patched, monitor=watcher)
    assert min(watcher.raw) > 100, "the model's raw gradients are huge"
    assert max(watcher.seen) <= 1.0 + 1e-4
    clipped = regression_subject("c", nn.Linear(1, 1), (x[:, :1],) * 2, (x[:, :1],) * 2, recipe=Recipe(grad_clip=0.5))
    with pytest.raises(InputError, match="already clips"):
        apply_fixes(clipped, ["grad-clip"])


def test_grad_clip_keeps_a_far_too_high_sgd_lr_finite():
    subject = CASES["sgd_lr_far_too_high"]()
    assert math.isnan(final_loss(subject, [])), "without clipping SGD at lr 3 goes to NaN"
    assert math.isfinite(final_loss(subject, ["grad-clip"]))


# --- dropout ------------------------------------------------------------------------------------

class WithDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop, self.drop2d = nn.Dropout(0.0), nn.Dropout2d(0.5)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)


def test_dropout_sets_every_rate_and_needs_dropout_layers():
    data = (torch.zeros(2, 1), torch.zeros(2, 1))
    subject = regression_subject("drop", WithDropout(), data, data)
    keys = set(subject.model.state_dict())
    patched = apply_fixes(subject, ["dropout"])
    rates = [m.p for m in patched.model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    assert len(rates) == 5 and set(rates) == {0.1}  # drop, drop2d and the layer's dropout, dropout1, dropout2
    assert {m.dropout for m in patched.model.modules() if isinstance(m, nn.MultiheadAttention)} == {0.1}
    assert set(patched.model.state_dict()) == keys
    assert subject.model.drop2d.p == 0.5, "the original is untouched"
    plain = regression_subject("mlp", nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)), data, data)
    with pytest.raises(InputError, match="no nn.Dropout"):
        apply_fixes(plain, ["dropout"])


# --- checkpoint round trip ----------------------------------------------------------------------

def test_all_three_fixes_survive_a_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    subject = build_subject("sparse-field", TINY)
    assert any(isinstance(m, nn.Dropout) for m in subject.model.modules()), "TransformerEncoderLayer has Dropout (p=0)"
    patched = apply_fixes(subject, ["warmup-cosine", "grad-clip", "dropout"])
    path = save_checkpoint(tmp_path / "patched.pt", patched)
    loaded = load_checkpoint(path).subject
    assert loaded.fixes_applied == ["warmup-cosine", "grad-clip", "dropout"]
    assert (loaded.recipe.schedule, loaded.recipe.warmup_steps, loaded.recipe.grad_clip) == ("warmup-cosine", 2, 1.0)
    dropouts = [m for m in loaded.model.modules() if isinstance(m, (nn.Dropout, nn.MultiheadAttention))]
    assert dropouts and all((m.dropout if isinstance(m, nn.MultiheadAttention) else m.p) == 0.1 for m in dropouts)
    state, original = loaded.model.state_dict(), patched.model.state_dict()
    assert set(state) == set(original) and all(torch.equal(state[k], original[k]) for k in state)
