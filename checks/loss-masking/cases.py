"""Cases for loss-masking: objectives that count visible positions or skip masked ones, and correct ones.

The check runs the model forward only, so these subjects are untrained.
"""
import torch
from torch import nn

from modeldoctor import MaskSpec, Recipe, Subject, Task, build_subject

SMALL = {"n_train_videos": 64, "n_eval_videos": 16}


def case_tokens_loss_on_every_position():
    """The seed: cross-entropy averaged over all positions, visible ones included."""
    return build_subject("moving-tokens", {**SMALL, "loss_on": "all"})


def case_tokens_loss_on_visible_positions_only():
    """An inverted mask: the loss is taken where the input is visible and never where it is masked."""
    subject = build_subject("moving-tokens", {**SMALL, "loss_on": "masked"})
    per_position, masked = subject.masking.per_position_loss, subject.masking.masked
    subject.loss = lambda model, batch: (per_position(model, batch) * ~masked(batch)).sum() / (~masked(batch)).sum()
    return subject


def case_tokens_masked_loss():
    return build_subject("moving-tokens", {**SMALL, "loss_on": "masked"})


class MaskedAutoencoder(nn.Module):
    """Reconstructs a 16-d vector whose masked entries are zeroed, told which entries are masked."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))

    def forward(self, values, hidden):  # (B, 16), (B, 16) bool -> (B, 16)
        return self.net(torch.cat([values.masked_fill(hidden, 0.0), hidden.float()], dim=-1))


def vector_subject(masked_only: bool) -> Subject:
    """Real-valued targets, a different model and batch layout: (values, hidden, targets) tuples."""
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(256, 16, generator=generator).cumsum(-1) / 4  # smooth-ish random walks

    def batches():
        for start in range(0, len(data), 32):
            values = data[start : start + 32]
            yield values, torch.rand(values.shape, generator=generator) < 0.3, values

    class Batches:
        def __iter__(self):
            return batches()

    def per_position(model, batch):
        values, hidden, targets = batch
        return (model(values, hidden) - targets) ** 2  # (B, 16)

    def loss(model, batch):
        hidden = batch[1].float()
        return (per_position(model, batch) * hidden).sum() / hidden.sum() if masked_only else per_position(model, batch).mean()

    torch.manual_seed(0)
    return Subject(
        name="masked-vectors", model=MaskedAutoencoder(), train_batches=Batches(), eval_batches=Batches(),
        loss=loss, predict=lambda model, batch: (model(batch[0], batch[1]), batch[2]),
        task=Task(kind="regression"), recipe=Recipe(lr=1e-3, steps=50),
        masking=MaskSpec(masked=lambda b: b[1], targets=lambda b: b[2], with_targets=lambda b, t: (b[0], b[1], t),
                         per_position_loss=per_position),
    )


def case_vectors_mse_on_every_entry():
    return vector_subject(masked_only=False)


def case_vectors_mse_on_masked_entries():
    return vector_subject(masked_only=True)
