"""pre-ln: switch transformer blocks to pre-LayerNorm (norm_first) with a final norm."""
from __future__ import annotations

from torch import nn

from ..core.fix import Fix
from ..core.registry import register_fix
from ..core.subject import Subject

LAYER_TYPES = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
STACK_TYPES = (nn.TransformerEncoder, nn.TransformerDecoder)


def norm_blocks(subject: Subject) -> list[nn.Module]:
    """PyTorch encoder/decoder layers, plus the blocks the subject declares in `capabilities.norm_blocks`."""
    blocks = [m for m in subject.model.modules() if isinstance(m, LAYER_TYPES)]
    blocks += [subject.model.get_submodule(name) for name in subject.capabilities.norm_blocks]
    return blocks


def layer_width(stack: nn.Module) -> int | None:
    for layer in stack.layers:
        for module in layer.modules():
            if isinstance(module, nn.LayerNorm):
                return module.normalized_shape[0]
    return None


@register_fix
class PreLN(Fix):
    """Pre-LN: normalise before each sublayer (`norm_first=True`) and once more after the stack.

    What it changes
    Sets `norm_first = True` on every `nn.TransformerEncoderLayer` / `nn.TransformerDecoderLayer`
    and on the blocks a subject declares in `capabilities.norm_blocks` (modules with a
    `norm_first` flag). A PyTorch encoder/decoder stack without a final norm gets a LayerNorm,
    which pre-LN needs before the head. Existing weights keep their names; the new final norm
    adds `<stack>.norm.weight/bias` (re-created when a patched checkpoint is loaded). The same
    weights compute a different function after the switch.

    Why
    Post-LN has large gradients near the output at initialisation and needs a careful warmup;
    pre-LN is "well-behaved at initialization" (Xiong et al., 2020). Seed 001: "Use pre-LN
    transformer - More stable training".
    """

    slug = "pre-ln"
    kind = "surgery"
    needs_retraining = True
    seed = "001"

    def applicable(self, subject: Subject) -> str | None:
        blocks = norm_blocks(subject)
        if not blocks:
            return "found no transformer layer with a norm_first switch (declare custom blocks in capabilities.norm_blocks)"
        if all(block.norm_first for block in blocks):
            return "every transformer block is already pre-LN"
        return None

    def apply(self, subject: Subject) -> None:
        for block in norm_blocks(subject):
            block.norm_first = True
        for stack in subject.model.modules():
            if isinstance(stack, STACK_TYPES) and stack.norm is None and layer_width(stack):
                stack.norm = nn.LayerNorm(layer_width(stack))
