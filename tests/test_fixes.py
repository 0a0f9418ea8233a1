"""Each fix does what its doc says, survives a checkpoint round trip, and removes its finding."""
import torch
from torch import nn

from modeldoctor import apply_fixes, build_subject, load_checkpoint, save_checkpoint
from modeldoctor.checks.mean_collapse import MeanCollapse
from modeldoctor.checks.query_coverage import QueryCoverage
from modeldoctor.engine.runner import run_check
from modeldoctor.probes.training import train

SMALL = {"n_train_fields": 256, "n_eval_fields": 16, "steps": 30}


def test_random_queries_removes_the_query_coverage_finding():
    subject = build_subject("sparse-field", SMALL)
    assert run_check(QueryCoverage(), subject).status == "fail"
    patched = apply_fixes(subject, ["random-queries"])
    result = run_check(QueryCoverage(), patched)
    assert result.status == "pass", result.summary
    assert result.metrics["coverage"] > 0.5
    assert run_check(QueryCoverage(), subject).status == "fail", "the original subject must be untouched"


def test_clamp_output_bounds_predictions_but_keeps_gradients():
    torch.manual_seed(0)
    subject = build_subject("sparse-field", SMALL)
    with torch.no_grad():
        subject.model.head.bias.fill_(5.0)  # every prediction far above the [0, 1] range
    batch = next(iter(subject.eval_batches))
    raw = subject.predict(subject.model, batch)[0]
    assert raw.min() > 1.0
    patched = apply_fixes(subject, ["clamp-output"])
    clamped = patched.predict(patched.model, batch)[0]
    assert clamped.min() >= 0.0 and clamped.max() <= 1.0
    patched.loss(patched.model, batch).backward()
    assert patched.model.head.bias.grad.abs().item() > 0, "straight-through: out-of-range outputs still get gradients"


def test_clamp_output_improves_mean_collapse_psnr_without_retraining():
    torch.manual_seed(0)
    subject = build_subject("sparse-field", SMALL)
    with torch.no_grad():
        subject.model.head.bias.fill_(2.0)
    before = run_check(MeanCollapse(), subject).metrics["psnr_db"]
    after = run_check(MeanCollapse(), apply_fixes(subject, ["clamp-output"])).metrics["psnr_db"]
    assert after > before + 3.0


def test_learnable_fourier_turns_the_buffer_into_a_trained_parameter_with_the_same_key(tmp_path):
    torch.manual_seed(0)
    subject = build_subject("sparse-field", SMALL)
    keys = set(subject.model.state_dict())
    patched = apply_fixes(subject, ["learnable-fourier"])
    assert isinstance(patched.model.fourier.B, nn.Parameter)
    assert set(patched.model.state_dict()) == keys
    initial = patched.model.fourier.B.detach().clone()
    train(patched, 20)
    assert not torch.equal(initial, patched.model.fourier.B.detach()), "the frequencies must move in training"
    # A patched checkpoint replays the fix on load.
    path = save_checkpoint(tmp_path / "patched.pt", patched)
    loaded = load_checkpoint(path).subject
    assert loaded.fixes_applied == ["learnable-fourier"]
    assert isinstance(loaded.model.fourier.B, nn.Parameter)
    assert torch.equal(loaded.model.fourier.B.detach(), patched.model.fourier.B.detach())


def test_fixes_are_idempotent_and_recorded_in_order():
    subject = build_subject("sparse-field", SMALL)
    patched = apply_fixes(subject, ["random-queries", "clamp-output", "random-queries"])
    assert patched.fixes_applied == ["random-queries", "clamp-output"]
    assert subject.fixes_applied == []


TOKENS_SMALL = {"n_train_videos": 64, "n_eval_videos": 16, "steps": 20}


def test_masked_loss_removes_the_loss_masking_finding():
    from modeldoctor.checks.loss_masking import LossMasking

    subject = build_subject("moving-tokens", TOKENS_SMALL)
    assert run_check(LossMasking(), subject).status == "fail"
    result = run_check(LossMasking(), apply_fixes(subject, ["masked-loss"]))
    assert result.status == "pass", result.summary
    assert result.metrics["loss_change_visible"] == 0.0 and result.metrics["loss_change_masked"] > 0


def test_pre_ln_switches_norm_first_adds_a_final_norm_and_round_trips(tmp_path):
    torch.manual_seed(0)
    subject = build_subject("moving-tokens", TOKENS_SMALL)
    layers = [m for m in subject.model.modules() if isinstance(m, nn.TransformerEncoderLayer)]
    assert layers and not any(layer.norm_first for layer in layers)
    patched = apply_fixes(subject, ["pre-ln"])
    assert all(m.norm_first for m in patched.model.modules() if isinstance(m, nn.TransformerEncoderLayer))
    assert isinstance(patched.model.encoder.norm, nn.LayerNorm)
    batch = next(iter(patched.eval_batches))
    assert not torch.allclose(subject.model(batch["input"]), patched.model(batch["input"])), "the function changed"
    train(patched, 5)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "pre_ln.pt", patched)).subject
    assert loaded.model.encoder.layers[0].norm_first
    assert torch.allclose(loaded.model(batch["input"]), patched.model(batch["input"]))
    from modeldoctor.core.registry import get_fix

    assert "already pre-LN" in get_fix("pre-ln")().applicable(patched)


def test_pre_ln_is_not_applicable_without_transformer_blocks():
    from modeldoctor import regression_subject
    from modeldoctor.core.registry import get_fix

    x = torch.rand(8, 1)
    subject = regression_subject("mlp", nn.Linear(1, 1), (x, x), (x, x))
    assert "norm_first" in get_fix("pre-ln")().applicable(subject)


def test_scale_up_rebuilds_wider_and_deeper_and_round_trips(tmp_path):
    torch.manual_seed(0)
    subject = build_subject("moving-tokens", TOKENS_SMALL)
    patched = apply_fixes(subject, ["pre-ln", "scale-up"])
    layers = [m for m in patched.model.modules() if isinstance(m, nn.TransformerEncoderLayer)]
    assert len(layers) == 2 * subject.config["n_layers"]
    assert patched.model.embed.embedding_dim == 2 * subject.config["d_model"]
    assert all(layer.norm_first for layer in layers), "fixes applied before scale-up are re-applied"
    assert patched.config == subject.config, "the stored config stays unscaled; loading replays scale-up"
    train(patched, 3)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "big.pt", patched)).subject
    batch = next(iter(patched.eval_batches))
    assert torch.allclose(loaded.model(batch["input"]), patched.model(batch["input"]))


def test_aux_recon_loss_weights_visible_positions_and_loss_masking_accepts_it():
    from modeldoctor.checks.loss_masking import LossMasking

    subject = apply_fixes(build_subject("moving-tokens", TOKENS_SMALL), ["masked-loss"])
    batch = next(iter(subject.train_batches))
    patched = apply_fixes(subject, ["aux-recon-loss"])
    per_position = subject.masking.per_position_loss(subject.model, batch)
    masked = batch["masked"].float()
    expected = (per_position * masked).sum() / masked.sum() + 0.1 * (per_position * (1 - masked)).sum() / (1 - masked).sum()
    assert torch.allclose(patched.loss(patched.model, batch), expected)
    result = run_check(LossMasking(), patched)
    assert result.status == "pass" and result.metrics["loss_change_visible"] > 0, result.summary
