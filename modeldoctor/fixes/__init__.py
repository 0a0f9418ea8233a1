"""Built-in fixes, one per file; importing this package registers them."""
from . import (  # noqa: F401
    clamp_output, dropout, grad_clip, learnable_fourier, masked_loss, pre_ln, random_queries, warmup_cosine,
)
