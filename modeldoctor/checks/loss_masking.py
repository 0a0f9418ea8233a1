"""loss-masking: does a masked objective count the masked positions, and only those?"""
from __future__ import annotations

import torch

from ..core.check import Check, CheckContext
from ..core.registry import register_check
from ..core.results import Figure, Finding, Measurement
from ..core.subject import Subject


def perturbed(targets: torch.Tensor, where: torch.Tensor, num_classes: int | None, generator: torch.Generator) -> torch.Tensor:
    """`targets` changed at `where`: another class for integer targets, shifted values for real ones."""
    changed = targets.clone()
    if targets.dtype in (torch.int64, torch.int32) and num_classes:
        shift = torch.randint(1, num_classes, targets.shape, generator=generator)
        changed[where] = (targets[where] + shift[where]) % num_classes
    else:
        scale = float(targets.float().std()) or 1.0
        changed[where] = targets[where] + scale * (1 + torch.rand(targets.shape, generator=generator)[where])
    return changed


@register_check
class LossMasking(Check):
    """Loss masking: does the loss count the masked positions, and only them?

    What it checks
    For subjects with a masked objective (capability `masking`), it evaluates the loss on one
    training batch three times, with the model fixed:
    - as given;
    - with the targets changed at the visible (unmasked) positions;
    - with the targets changed at the masked positions.
    A masked objective must not move in the second case (visible targets are in the input, so
    the model can copy them) and must move in the third case.

    Why it matters
    Seed 001's debugging checklist: "Check loss computation - masked positions only". When
    visible positions count, most of the loss is a copy task the model solves at once. The
    loss then looks healthy while the masked prediction, the actual task, gets a diluted share
    of the gradient. If the masked positions do not count at all, the model is never trained
    on the task.

    Evidence
    The relative change of the loss under each perturbation, the share of masked positions in
    the batch, and the loss itself.

    Fixes
    masked-loss: average the per-position loss over masked positions only.

    A subject whose objective weights visible positions on purpose (an auxiliary reconstruction
    loss) declares `capabilities.visible_loss_weight`; visible positions then pass.

    Options
    tolerance (1e-6): relative loss change below which a perturbation counts as "no effect".
    """

    slug = "loss-masking"
    code = "MD005"
    title = "Loss counts masked positions only"
    fixes = ("masked-loss",)
    default_options = {"tolerance": 1e-6}

    def requires(self, subject: Subject) -> str | None:
        return None if subject.masking is not None else "the subject declares no masked objective (capability `masking`)"

    @torch.no_grad()
    def measure(self, subject: Subject, ctx: CheckContext) -> Measurement:
        masking, model = subject.masking, subject.model
        model.eval()  # no dropout noise: only the targets may change the loss
        batch = next(iter(subject.train_batches))
        masked = masking.masked(batch).bool()
        targets = masking.targets(batch)
        generator = torch.Generator().manual_seed(ctx.seed)
        base = float(subject.loss(model, batch))
        visible_changed = float(subject.loss(model, masking.with_targets(batch, perturbed(targets, ~masked, subject.task.num_classes, generator))))
        masked_changed = float(subject.loss(model, masking.with_targets(batch, perturbed(targets, masked, subject.task.num_classes, generator))))
        scale = max(abs(base), 1e-12)
        metrics = {
            "loss": base,
            "loss_change_visible": abs(visible_changed - base) / scale,
            "loss_change_masked": abs(masked_changed - base) / scale,
            "masked_fraction": float(masked.float().mean()),
            "declared_visible_weight": subject.capabilities.visible_loss_weight,
        }
        return Measurement(metrics=metrics, figures=lambda: [Figure("bar", "Relative loss change when targets change", {
            "labels": ["visible targets changed", "masked targets changed"],
            "values": [metrics["loss_change_visible"], metrics["loss_change_masked"]],
            "ylabel": "|Δloss| / loss",
        })])

    def judge(self, measurement: Measurement) -> list[Finding]:
        """One finding: which positions the loss counts, against the masked-only ideal."""
        m, tolerance = measurement.metrics, self.options["tolerance"]
        leaks, counted = m["loss_change_visible"] > tolerance, m["loss_change_masked"] > tolerance
        said = (f"changing visible targets moves the loss by {m['loss_change_visible']:.1%}, "
                f"changing masked targets by {m['loss_change_masked']:.1%} ({m['masked_fraction']:.0%} of positions masked)")
        both = ("loss_change_visible", "loss_change_masked")
        if leaks and not counted:
            return [Finding("fail", "inverted", f"the loss counts visible positions and ignores masked ones: {said}", both, self.fixes)]
        if leaks and m["declared_visible_weight"]:
            return [Finding("pass", "declared-visible", "the loss counts masked positions and, by declaration, visible ones "
                            f"at weight {m['declared_visible_weight']:g}: {said}", (*both, "declared_visible_weight"))]
        if leaks:
            return [Finding("fail", "visible-leak", f"visible positions leak into the loss: {said}", ("loss_change_visible",), self.fixes)]
        if not counted:
            return [Finding("fail", "masked-ignored", f"masked positions are not counted in the loss: {said}",
                            ("loss_change_masked",), self.fixes)]
        return [Finding("pass", "masked-only", f"the loss counts masked positions only: {said}", both)]
