"""reinit-dead-units: revive dead units in a checkpoint's tensors (ReDo), keeping the network's function."""
from __future__ import annotations

import math
import zlib

import torch

from ..core.evidence import Weights
from ..core.fix import Fix
from ..core.registry import register_fix
from ..probes.unit_health import LayerUnits, survey


@register_fix
class ReinitDeadUnits(Fix):
    """Reinit dead units: give each dead unit fresh incoming weights and zero outgoing ones (ReDo).

    What it changes
    The tensors only, found by the dead-units survey (default thresholds). For each dead unit of a
    Linear or convolution whose consumer is inferred (the next layer reading its outputs; see the
    dead-units check): its incoming row is drawn as PyTorch draws a fresh one (kaiming-uniform with
    a = √5, U(−1/√fan_in, 1/√fan_in)) and scaled to the median norm of the layer's live rows, so
    the unit starts at its peers' scale; its bias is drawn from U(−1/√fan_in, 1/√fan_in); the
    running statistics of a BatchNorm between the two become a fresh BatchNorm's (mean 0,
    variance 1); its column in the consumer is set to 0. Nothing the revived unit computes reaches
    the consumer yet, so the network's function changes only by what the dead unit still
    contributed: nothing when its column was 0, or its row and bias were 0 with no BatchNorm
    between (ReLU, GELU, tanh and SiLU map 0 to 0); a constant when only its row was 0 (its bias
    through the BatchNorm and activation, times its column; retraining absorbs it in the
    consumer's bias); a faded unit's small remainder otherwise. A norm channel whose scale γ is ~0
    gets the layer's median |γ| (1 when the whole layer is ~0): this part does change the function
    (the channel passes its normalized input again), since a norm layer's consumers cannot be
    found reliably (a pre-norm feeds several projections and a residual stream). Dead units of a
    layer without an inferred consumer are left as they are. When a whole layer was dead, every
    column of its consumer is zeroed, so the consumer's rows are 0 until training gives them
    weights again (their gradients are not 0: the revived units feed them), and dead-units reports
    the consumer in the meantime. The draws are seeded by tensor name, so the result is
    deterministic; shapes, dtypes and names are kept, and a second application finds nothing to do.

    Why
    A unit whose incoming and outgoing weights are 0 gets zero gradients on both sides and stays
    dead however long the model trains; a unit with a ~0 incoming row is input-independent. ReDo
    (Sokar et al., ICML 2023, "The Dormant Neuron Phenomenon in Deep RL") recycles such units this
    way: fresh incoming weights give them gradients again, zero outgoing weights keep the trained
    network's output, and training then puts the units back to work.
    """

    slug = "reinit-dead-units"
    kind = "weights"
    needs = "weights"
    needs_retraining = True
    seed = ""

    def applicable_weights(self, weights: Weights) -> str | None:
        found = [units for units in survey(weights) if units.dead]
        if not found:
            return "no dead units: every row, filter and norm scale is alive"
        if not any(units.revivable for units in found):
            return (f"the dead units ({', '.join(f'`{u.tensor}`' for u in found[:3])}) are in layers with no inferred "
                    "consumer: re-initializing them would change the network's function")
        return None

    def apply_weights(self, weights: Weights) -> dict[str, torch.Tensor]:
        found = [units for units in survey(weights) if units.revivable]
        new: dict[str, torch.Tensor] = {}

        def current(name: str) -> torch.Tensor:
            if name not in new:
                new[name] = weights.tensor(name).detach().clone()
            return new[name]

        for units in found:  # fresh rows and scales first: a layer can be both a producer and a consumer
            if units.kind == "norm":
                reset_scales(current(units.tensor), units)
            else:
                fresh_rows(current(units.tensor), current(units.bias) if units.bias else None, units)
        for units in found:
            if units.consumer is not None:
                current(units.consumer)[:, units.dead] = 0  # (out, in, *k): the dead units' columns
            for name in units.running:  # a fresh BatchNorm's statistics: mean 0, variance 1
                current(name)[units.dead] = 1.0 if name.endswith("running_var") else 0.0
        return new


def generator_for(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def fresh_rows(weight: torch.Tensor, bias: torch.Tensor | None, units: LayerUnits) -> None:
    """Rows `units.dead` of `weight` (out, in, *k) from PyTorch's default init at the live rows' scale."""
    dead = torch.tensor(units.dead)
    fan_in = weight[0].numel()
    bound = 1 / math.sqrt(fan_in)
    generator = generator_for(units.tensor)
    rows = (torch.rand((len(dead), *weight.shape[1:]), generator=generator) * 2 - 1) * bound  # (d, in, *k)
    norms = weight.float().reshape(len(weight), -1).norm(dim=1)  # (out,)
    live = torch.ones(len(weight), dtype=torch.bool)
    live[dead] = False
    if live.any():
        target = norms[live].median()
        rows = rows * (target / rows.reshape(len(rows), -1).norm(dim=1).clamp_min(1e-12)).reshape(-1, *[1] * (weight.dim() - 1))
    weight[dead] = rows.to(weight.dtype)
    if bias is not None:
        bias[dead] = ((torch.rand(len(dead), generator=generator) * 2 - 1) * bound).to(bias.dtype)


def reset_scales(scale: torch.Tensor, units: LayerUnits) -> None:
    """Scales `units.dead` of a norm's γ (n,) to the median |γ| of the live ones (1 when none is live)."""
    live = torch.ones(len(scale), dtype=torch.bool)
    live[units.dead] = False
    typical = scale.float().abs()[live].median() if live.any() else torch.tensor(1.0)
    scale[units.dead] = typical.to(scale.dtype)
