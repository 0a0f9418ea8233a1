"""Built-in checks, one per file; importing this package registers them (in battery order)."""
from . import (  # noqa: F401
    overfit_batch, grad_norms, lr_range, loss_masking, mean_collapse, query_coverage, codec_roundtrip, expert_balance,
    attention, retrieval,
)
