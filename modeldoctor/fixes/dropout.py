"""dropout: set the dropout rate of every dropout layer and attention module to 0.1."""
from __future__ import annotations

from torch import nn

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Subject

RATE = 0.1


def dropout_sites(model: nn.Module) -> list[nn.Module]:
    """Every `nn.Dropout*` module (Dropout, Dropout1d/2d/3d, AlphaDropout...) and `nn.MultiheadAttention`."""
    return [m for m in model.modules() if isinstance(m, (nn.modules.dropout._DropoutNd, nn.MultiheadAttention))]


@register_fix
class SetDropout(Fix):
    """Dropout 0.1: regularise a model that overfits by setting its dropout layers to p = 0.1.

    What it changes
    Sets `p = 0.1` on every `nn.Dropout*` module of the model (including those inside
    `nn.TransformerEncoderLayer`, which always has them, even when built with dropout=0.0) and
    the attention-weight `dropout` of every `nn.MultiheadAttention`. The rate is set, not
    raised: a layer at 0.3 goes down to 0.1. No module is added and no parameter renamed, so
    a model without dropout layers (or dropout written as `F.dropout` calls) is out of reach:
    the fix then does not apply. Dropout acts only in training mode; evaluation is unchanged.

    Why
    A model that fits its training data far better than its evaluation data memorises; dropout
    (Srivastava et al. 2014) is the standard cheap regulariser, and 0.1 is the usual
    transformer rate (Vaswani et al. 2017). Seed 001: "Add dropout (0.1) - Currently missing in
    the model".
    """

    slug = "dropout"
    kind = "surgery"
    needs_retraining = True
    seed = "001"

    def applicable(self, subject: Subject) -> str | None:
        if not dropout_sites(subject.model):
            return "the model has no nn.Dropout or nn.MultiheadAttention modules whose rate could be set"
        return None

    def apply(self, subject: Subject) -> None:
        for module in dropout_sites(subject.model):
            if isinstance(module, nn.MultiheadAttention):
                module.dropout = RATE
            else:
                module.p = RATE
