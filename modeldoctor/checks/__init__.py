"""Built-in checks, one per file; importing this package registers them (in battery order)."""
from . import (  # noqa: F401
    attention,
    codec_roundtrip,
    expert_balance,
    grad_norms,
    loss_masking,
    lr_range,
    mean_collapse,
    overfit_batch,
    query_coverage,
    retrieval,
)
