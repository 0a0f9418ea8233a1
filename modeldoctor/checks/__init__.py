"""Built-in checks, one per file; importing this package registers them (in battery order).

The weight checks come first: they need only a checkpoint's tensors and take seconds.
"""
from . import (  # noqa: F401
    non_finite, dead_units, untrained_layers, optimizer_state, weight_collapse, spectral_shape,
    overfit_batch, grad_norms, lr_range, loss_masking, mean_collapse, query_coverage, codec_roundtrip, expert_balance,
    attention, retrieval,
)
